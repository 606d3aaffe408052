"""The event log: committed before accepted, hash-chained, tamper evident, group-committed, pruned
only after delivery, and honest about what it cannot do.

Every test runs against real SQLite files in a temporary directory: tampering is done with SQL on
a copy of a closed log, a full disk is SQLite's own page limit (the same SQLITE_FULL an ENOSPC
gives), a second writer is a second real lock, and a read-only directory is refused by the kernel.
Time is a FakeClock: ``advance`` moves wall and monotonic time, ``step_wall`` only the wall clock
(NTP stepping a Pi that booted without a real-time clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from event_samples import SAMPLES, sample
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pumpgw.gateway import eventlog as eventlog_module
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import ChainBroken, EventLogError
from pumpgw.gateway.eventlog import (
    CLOCK_STEP_S,
    GENESIS_HASH,
    MAINTAIN_EVERY,
    EventLog,
    EventStore,
    Retention,
    event_hash,
    verify_file,
)
from pumpgw.gateway.events import NO_REFS, Event, EventType, NewEvent, Refs

# Every test here verifies a control of HAZ-013 (event log altered, reordered or lost).
pytestmark = pytest.mark.hazard("HAZ-013")

REFS = Refs(patient="MRN-0001", order="ORD-1", clinician="RN-7")
KEEP_ALL = Retention()  # no cap: nothing is ever deleted


# --- helpers --------------------------------------------------------------------------------------


def ev(
    type: EventType = EventType.CHANNEL_STATE,
    *,
    pump: str | None = "p1",
    channel: int | None = 1,
    refs: Refs = NO_REFS,
) -> NewEvent:
    """A new event of ``type`` with its valid sample payload."""
    return NewEvent(type, sample(type), pump, channel, refs)


def new(n: int) -> list[NewEvent]:
    return [ev() for _ in range(n)]


def big_event(kib: int = 64) -> NewEvent:
    """A valid event with a large payload (a scan's parsed data has no length limit)."""
    payload = {"kind": "medication", "data": {"01": "x" * (kib * 1024)}, "scanner": "s1"}
    return NewEvent(EventType.SCAN_ACCEPTED, payload)


@contextlib.contextmanager
def opened(
    path: Path, clock: FakeClock | None = None, retention: Retention = KEEP_ALL
) -> Iterator[EventStore]:
    store = EventStore(path, "gw-1", clock or FakeClock(), retention)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[EventStore]:
    with opened(tmp_path / "events.sqlite3", clock) as s:
        yield s


def all_events(store: EventStore) -> list[Event]:
    return store.read_after(0, limit=1_000_000)


def of_type(events: Sequence[Event], type: EventType) -> list[Event]:
    return [e for e in events if e.type == type]


def run_sql(path: Path, *statements: str, params: Sequence[Any] = ()) -> None:
    """Change the database at ``path`` behind the log's back (as an attacker or a careless admin)."""
    db = sqlite3.connect(path)
    try:
        for sql in statements:
            db.execute(sql, params if "?" in sql else ())
        db.commit()
    finally:
        db.close()


def tampered_copy(original: Path, tmp_path: Path, *statements: str, params: Sequence[Any] = ()) -> Path:
    """A copy of the closed log at ``original`` with ``statements`` applied; the original is untouched."""
    copy = tmp_path / "tampered" / "events.sqlite3"
    copy.parent.mkdir(exist_ok=True)
    shutil.copy(original, copy)
    run_sql(copy, *statements, params=params)
    return copy


def read_column(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.execute(sql, tuple(params)))
    finally:
        db.close()


def limit_growth(db: sqlite3.Connection, pages: int) -> None:
    """Let the database grow by at most ``pages`` pages.

    ``max_page_count`` is SQLite's own size limit: a write beyond it fails with SQLITE_FULL, the
    very error code (and message, "database or disk is full") that a full disk (ENOSPC) gives. It
    is a per-connection setting, so the test reaches the store's connection (``_db``): that makes
    the log itself hit a real full-disk error without filling the machine's disk.
    """
    current = int(db.execute("PRAGMA page_count").fetchone()[0])
    db.execute(f"PRAGMA max_page_count = {current + pages}").fetchone()


def lift_limit(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA max_page_count = 1073741823").fetchone()


@contextlib.asynccontextmanager
async def running_log(
    path: Path, clock: FakeClock, retention: Retention = KEEP_ALL, max_batch: int = 500
) -> AsyncIterator[EventLog]:
    """An open EventLog with its group-commit writer running; stopped and closed afterwards."""
    log = EventLog(path, "gw-1", clock, max_batch, retention=retention)
    ready = asyncio.Event()
    writer = asyncio.create_task(log.run(ready), name="eventlog-writer")
    waiting = asyncio.create_task(ready.wait(), name="eventlog-ready")
    await asyncio.wait({writer, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if writer.done():  # it failed to open: say why instead of waiting forever
        waiting.cancel()
        await log.close()
        writer.result()
    try:
        yield log
    finally:
        writer.cancel()
        await asyncio.wait({writer})
        await log.close()


# --- appending: seq, ids, time, chain, refs -------------------------------------------------------


def test_append_assigns_seq_ids_times_and_chain(store: EventStore) -> None:
    events = store.append(new(3))
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == GENESIS_HASH
    assert events[1].prev_hash == events[0].hash
    assert events[2].prev_hash == events[1].hash
    assert all(uuid.UUID(e.id).version == 7 for e in events)
    assert [e.id for e in events] == sorted(e.id for e in events)  # time-ordered
    assert len({e.id for e in events}) == 3
    assert events[0].time == "2026-01-01T00:00:00.000Z"
    assert all(e.gateway == "gw-1" for e in events)
    assert all(e.hash == event_hash(e.prev_hash, e.content()) for e in events)
    assert store.last_seq == 3
    assert store.first_seq == 1
    assert store.verify() == 3


def test_every_event_type_round_trips_through_the_log(store: EventStore) -> None:
    batch = [ev(t, refs=REFS) for t in SAMPLES]
    written = store.append(batch)
    assert all_events(store) == written
    assert [e.type for e in written] == [str(t) for t in SAMPLES]
    assert [e.payload for e in written] == [SAMPLES[t] for t in SAMPLES]
    assert store.verify() == len(SAMPLES)


def test_refs_are_stored_returned_and_read_back(store: EventStore) -> None:
    refs = Refs(patient="MRN-0042", order="ORD-77", clinician="RN-3")
    written = store.append([ev(EventType.INFUSION_STARTED, refs=refs), ev(EventType.GATEWAY_STOPPED)])
    assert (written[0].patient, written[0].order, written[0].clinician) == ("MRN-0042", "ORD-77", "RN-3")
    assert (written[1].patient, written[1].order, written[1].clinician) == (None, None, None)
    assert all_events(store) == written
    rows = read_column(store.path, "SELECT patient, order_ref, clinician FROM events ORDER BY seq")
    assert rows == [("MRN-0042", "ORD-77", "RN-3"), (None, None, None)]


@pytest.mark.parametrize("ref", ["patient", "order", "clinician"])
def test_refs_are_covered_by_the_hash(store: EventStore, ref: str) -> None:
    e = store.append([ev(EventType.INFUSION_STARTED, refs=REFS)])[0]
    assert e.content()[ref] is not None
    assert event_hash(e.prev_hash, {**e.content(), ref: None}) != e.hash
    assert event_hash(e.prev_hash, {**e.content(), ref: "someone else"}) != e.hash


def test_ids_stay_ordered_when_the_wall_clock_steps_back(store: EventStore, clock: FakeClock) -> None:
    first = store.append(new(1))[0]
    clock.step_wall(-3600)
    second = store.append(new(1))[0]
    assert second.id > first.id


def test_ids_stay_ordered_across_a_restart_after_the_wall_clock_stepped_back(tmp_path: Path) -> None:
    # A Pi without a real-time clock reboots to an old time: the new process must still hand out ids
    # above the ones already in the log (downstream de-duplicates and orders by them).
    clock = FakeClock()
    path = tmp_path / "events.sqlite3"
    with opened(path, clock) as s:
        before = s.append(new(3))
    clock.step_wall(-86_400)
    with opened(path, clock) as s:
        after = s.append(new(3))
    ids = [e.id for e in [*before, *after]]
    assert ids == sorted(ids)
    assert len(set(ids)) == 6


def test_ids_stay_ordered_across_a_restart_within_the_same_millisecond(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    clock = FakeClock()  # never moves: every id is made in the same millisecond
    ids: list[str] = []
    for _ in range(20):
        with opened(path, clock) as s:
            ids += [e.id for e in s.append(new(2))]
    assert ids == sorted(ids)
    assert len(set(ids)) == 40


def test_thousands_of_ids_in_one_millisecond_stay_ordered(store: EventStore) -> None:
    # 5,000 > the 4,096 a UUIDv7 counter holds per millisecond: the generator borrows the next one.
    ids = [e.id for e in store.append(new(5000))]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5000


def test_the_chain_continues_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    with opened(path) as s:
        last = s.append(new(2))[-1]
    with opened(path) as s:
        assert (s.last_seq, s.first_seq) == (2, 1)
        e = s.append(new(1))[0]
        assert e.seq == 3
        assert e.prev_hash == last.hash
        assert s.verify() == 3


def test_wal_and_full_sync_are_in_force(store: EventStore) -> None:
    db = sqlite3.connect(store.path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
    # synchronous is per connection: only the store's own connection can show it (2 = FULL).
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_an_empty_batch_writes_nothing(store: EventStore) -> None:
    assert store.append([]) == []
    assert store.count() == 0


def test_unknown_event_type_is_refused(store: EventStore) -> None:
    with pytest.raises(EventLogError, match=r"unknown event type 'made\.up'"):
        store.append([NewEvent("made.up", {})])  # type: ignore[arg-type]
    assert store.count() == 0


def test_outbox_position_never_moves_backwards(store: EventStore) -> None:
    store.append(new(5))
    assert store.delivered_seq("mqtt") == 0
    store.mark_delivered("mqtt", 4)
    store.mark_delivered("mqtt", 2)
    assert store.delivered_seq("mqtt") == 4
    assert [e.seq for e in store.read_after(4)] == [5]


def test_time_of_names_the_commit_time(store: EventStore, clock: FakeClock) -> None:
    store.append(new(1))
    clock.advance(1.5)
    store.append(new(1))
    assert store.time_of(1) == "2026-01-01T00:00:00.000Z"
    assert store.time_of(2) == "2026-01-01T00:00:01.500Z"
    assert store.time_of(3) is None


# --- payload validation ---------------------------------------------------------------------------


def _without(type: EventType, key: str) -> dict[str, Any]:
    payload = sample(type)
    del payload[key]
    return payload


def _with(type: EventType, **changes: Any) -> dict[str, Any]:
    return {**sample(type), **changes}


def _bad_check_outcome() -> dict[str, Any]:
    payload = sample(EventType.RECONCILIATION)
    payload["checks"][0]["outcome"] = "probably"
    return payload


BAD_PAYLOADS = [
    pytest.param(EventType.CHANNEL_STATE, {**sample(EventType.CHANNEL_STATE), "n": 1}, "n", id="extra-key"),
    pytest.param(EventType.CHANNEL_STATE, _without(EventType.CHANNEL_STATE, "to"), "to", id="missing-key"),
    pytest.param(
        EventType.CHANNEL_STATE, _with(EventType.CHANNEL_STATE, rate_ml_h=4.0), "rate_ml_h", id="float"
    ),
    pytest.param(
        EventType.CHANNEL_STATE, _with(EventType.CHANNEL_STATE, to="flying"), "to", id="bad-literal"
    ),
    pytest.param(EventType.ALARM_RAISED, {"alarm": ""}, "alarm", id="empty-text"),
    pytest.param(
        EventType.LOG_PRUNED, _with(EventType.LOG_PRUNED, through_hash="nope"), "through_hash", id="hash"
    ),
    pytest.param(EventType.RECONCILIATION, _bad_check_outcome(), "checks.0.outcome", id="nested"),
    pytest.param(EventType.GATEWAY_STOPPED, {"why": "x"}, "why", id="empty-model"),
]


@pytest.mark.parametrize(("type", "payload", "key"), BAD_PAYLOADS)
def test_a_payload_that_does_not_fit_its_type_is_refused_naming_the_key(
    store: EventStore, type: EventType, payload: dict[str, Any], key: str
) -> None:
    with pytest.raises(EventLogError, match="payload does not fit the schema") as info:
        store.append([NewEvent(type, payload)])
    assert f"{key}:" in info.value.detail
    assert str(type) in info.value.detail
    assert store.count() == 0


def test_one_bad_payload_refuses_the_whole_batch_of_a_store_append(store: EventStore) -> None:
    bad = NewEvent(EventType.CHANNEL_STATE, {"n": 1})
    with pytest.raises(EventLogError, match="n: Extra inputs"):
        store.append([ev(), ev(), bad])
    assert store.count() == 0
    assert store.last_seq == 0
    assert store.append(new(1))[0].seq == 1


def test_a_payload_that_is_not_plain_json_is_refused_by_the_store(store: EventStore) -> None:
    # Unchecked (as EventLog passes it): the canonical JSON of the hash still refuses it.
    with pytest.raises(EventLogError, match="not plain JSON"):
        store.append([NewEvent(EventType.ALARM_RAISED, {"alarm": float("nan")})], check=False)
    # A lone surrogate (bytes decoded with surrogateescape) cannot be hashed as UTF-8: refused
    # before the transaction. (The message blames the payload even when, as here, it is the pump.)
    with pytest.raises(EventLogError, match="surrogates not allowed"):
        store.append([ev(), NewEvent(EventType.ALARM_RAISED, {"alarm": "x"}, pump="p\udcff")])
    assert store.count() == 0
    assert not store._db.in_transaction
    assert store.append(new(1))[0].seq == 1


async def test_async_append_returns_after_commit_and_groups_commits(tmp_path: Path, clock: FakeClock) -> None:
    async with running_log(tmp_path / "e.sqlite3", clock) as log:
        signal = asyncio.Event()
        log.subscribe(signal)
        payload = sample(EventType.CHANNEL_STATE)
        results = await asyncio.gather(
            *(log.append(EventType.CHANNEL_STATE, payload, pump="p", channel=1) for _ in range(200))
        )
        assert sorted(e.seq for e in results) == list(range(1, 201))
        assert signal.is_set()
        # Committed means readable by another connection right now.
        assert read_column(tmp_path / "e.sqlite3", "SELECT count(*) FROM events") == [(200,)]


async def test_refs_travel_through_the_async_log(tmp_path: Path, clock: FakeClock) -> None:
    async with running_log(tmp_path / "e.sqlite3", clock) as log:
        e = await log.append(
            EventType.ALARM_RAISED, sample(EventType.ALARM_RAISED), pump="p", channel=2, refs=REFS
        )
        assert (e.patient, e.order, e.clinician, e.pump, e.channel) == ("MRN-0001", "ORD-1", "RN-7", "p", 2)
        assert await log.read_after(0) == [e]


async def test_events_queued_at_stop_are_still_committed(tmp_path: Path, clock: FakeClock) -> None:
    log = EventLog(tmp_path / "e.sqlite3", "gw", clock)
    ready = asyncio.Event()
    writer = asyncio.create_task(log.run(ready))
    await ready.wait()
    pending = [asyncio.create_task(log.append(EventType.GATEWAY_STOPPED, {})) for _ in range(3)]
    await asyncio.sleep(0)  # one turn of the loop: the appends reach the queue (no waiting on time)
    writer.cancel()
    await asyncio.wait({writer})
    assert [t.result().seq for t in pending] == [1, 2, 3]
    await log.close()


async def test_a_bad_payload_is_refused_to_its_caller_only(tmp_path: Path, clock: FakeClock) -> None:
    # Found in review: a Decimal in a payload killed the writer and lost the other events.
    from decimal import Decimal

    async with running_log(tmp_path / "e.sqlite3", clock) as log:
        # Queued together, so the good ones share one group commit with nothing bad in it.
        results = await asyncio.gather(
            log.append(EventType.ALARM_RAISED, {"alarm": "occlusion"}),
            log.append(EventType.CHANNEL_STATE, {"n": 1}),
            log.append(
                EventType.CHANNEL_STATE, {**sample(EventType.CHANNEL_STATE), "rate_ml_h": Decimal("5")}
            ),
            log.append(EventType.ALARM_RAISED, {"alarm": float("nan")}),
            log.append("made.up", {}),  # type: ignore[arg-type]
            log.append(EventType.ALARM_CLEARED, {"alarm": "occlusion"}),
            return_exceptions=True,
        )
        good = [r for r in results if isinstance(r, Event)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert [e.seq for e in good] == [1, 2]
        assert [e.type for e in good] == ["channel.alarm_raised", "channel.alarm_cleared"]
        assert all(isinstance(r, EventLogError) for r in refused)
        reasons = [str(r) for r in refused]
        assert "n: Extra inputs are not permitted" in reasons[0]
        assert "not plain JSON" in reasons[1]
        assert "not plain JSON" in reasons[2]
        assert "unknown event type" in reasons[3]
        assert log.health.ok
        assert (await log.append(EventType.GATEWAY_STOPPED)).seq == 3
        assert (await log.read_after(0))[:2] == good
        assert log.store.verify() == 3


async def test_an_unencodable_pump_id_is_refused_to_its_caller_only(tmp_path: Path, clock: FakeClock) -> None:
    async with running_log(tmp_path / "e.sqlite3", clock) as log:
        good, bad = await asyncio.gather(
            log.append(EventType.ALARM_RAISED, {"alarm": "occlusion"}, pump="p1"),
            log.append(EventType.ALARM_RAISED, {"alarm": "occlusion"}, pump="p\udcff"),  # undecodable byte
            return_exceptions=True,
        )
        assert isinstance(bad, EventLogError)
        assert isinstance(good, Event)
        assert log.health.ok


# --- tampering: every change is found and the first bad event named -----------------------------


@pytest.fixture
def closed_log(tmp_path: Path) -> tuple[Path, list[Event]]:
    """A closed log of six events of different types (3 is an alarm with refs), and those events."""
    path = tmp_path / "log" / "events.sqlite3"
    clock = FakeClock()
    events: list[Event] = []
    with opened(path, clock) as s:
        for type, refs in [
            (EventType.GATEWAY_STARTED, NO_REFS),
            (EventType.PUMP_IDENTIFIED, NO_REFS),
            (EventType.ALARM_RAISED, REFS),
            (EventType.INFUSION_STARTED, REFS),
            (EventType.ALARM_CLEARED, REFS),
            (EventType.GATEWAY_STOPPED, NO_REFS),
        ]:
            clock.advance(1)
            events += s.append([ev(type, refs=refs)])
    assert not (path.parent / "events.sqlite3-wal").exists()  # closed: everything is in the file
    return path, events


def test_verify_file_is_read_only_and_reports_the_end_of_the_chain(
    closed_log: tuple[Path, list[Event]], tmp_path: Path
) -> None:
    path, events = closed_log
    before = path.read_bytes()
    result = verify_file(path)
    assert (result.count, result.first_seq, result.last_seq) == (6, 1, 6)
    assert result.last_hash == events[-1].hash
    assert result.pruned_through == 0
    assert result.destinations == {}
    assert path.read_bytes() == before
    other = tmp_path / "other.sqlite3"
    run_sql(other, "CREATE TABLE t (x)")
    with pytest.raises(EventLogError, match="not a pumpgw event log"):
        verify_file(other)
    with pytest.raises(EventLogError, match="no such event log"):
        verify_file(tmp_path / "absent.sqlite3")


def _swap(a: int, b: int) -> tuple[str, ...]:
    return (
        f"UPDATE events SET seq = -1 WHERE seq = {a}",
        f"UPDATE events SET seq = {a} WHERE seq = {b}",
        f"UPDATE events SET seq = {b} WHERE seq = -1",
    )


TAMPERING = [
    pytest.param(
        ('UPDATE events SET payload = \'{"alarm":"air-in-line"}\' WHERE seq = 3',), 3, "edited", id="payload"
    ),
    pytest.param(
        ("UPDATE events SET time = '2026-01-01T00:00:09.000Z' WHERE seq = 3",), 3, "edited", id="time"
    ),
    pytest.param(("UPDATE events SET type = 'channel.alarm_cleared' WHERE seq = 3",), 3, "edited", id="type"),
    pytest.param(("UPDATE events SET patient = 'MRN-9999' WHERE seq = 3",), 3, "edited", id="patient"),
    pytest.param(("UPDATE events SET order_ref = 'ORD-2' WHERE seq = 4",), 4, "edited", id="order"),
    pytest.param(("UPDATE events SET clinician = NULL WHERE seq = 5",), 5, "edited", id="clinician"),
    pytest.param(("UPDATE events SET pump = 'p2' WHERE seq = 2",), 2, "edited", id="pump"),
    pytest.param(("UPDATE events SET channel = 2 WHERE seq = 2",), 2, "edited", id="channel"),
    pytest.param(("UPDATE events SET gateway = 'gw-2' WHERE seq = 6",), 6, "edited", id="gateway"),
    pytest.param(("UPDATE events SET hash = prev_hash WHERE seq = 4",), 4, "edited", id="hash"),
    pytest.param(
        ("UPDATE events SET prev_hash = hash WHERE seq = 4",), 4, "prev_hash does not match", id="prev-hash"
    ),
    pytest.param(
        ("DELETE FROM events WHERE seq = 3",), 3, "missing; next stored event is seq 4", id="delete-middle"
    ),
    pytest.param(("DELETE FROM events WHERE seq BETWEEN 2 AND 4",), 2, "missing", id="delete-range"),
    pytest.param(
        ("DELETE FROM events WHERE seq = 1",), 1, "missing; next stored event is seq 2", id="delete-first"
    ),
    pytest.param(_swap(2, 3), 2, "prev_hash does not match", id="reorder"),
    pytest.param(_swap(1, 6), 1, "prev_hash does not match", id="reorder-ends"),
    pytest.param(
        ("UPDATE events SET payload = '{oops' WHERE seq = 3",), 3, "not valid JSON", id="invalid-json"
    ),
    pytest.param(
        ("UPDATE events SET payload = '[1]' WHERE seq = 3",), 3, "not a JSON object", id="json-array"
    ),
    pytest.param(
        (
            "INSERT INTO events SELECT 7, 'forged-id', time, gateway, type, pump, channel, patient, order_ref, "
            "clinician, payload, hash, hash FROM events WHERE seq = 6",
        ),
        7,
        "edited",
        id="appended-forgery",
    ),
]


@pytest.mark.parametrize(("statements", "seq", "reason"), TAMPERING)
def test_tampering_is_found_and_the_first_bad_event_named(
    closed_log: tuple[Path, list[Event]], tmp_path: Path, statements: tuple[str, ...], seq: int, reason: str
) -> None:
    path, _ = closed_log
    copy = tampered_copy(path, tmp_path, *statements)
    with pytest.raises(ChainBroken) as info:
        verify_file(copy)
    assert info.value.seq == seq
    assert reason in info.value.reason
    assert f"seq {seq}" in str(info.value)
    assert verify_file(path).count == 6  # the original is untouched


def test_an_edited_event_with_a_recomputed_hash_is_found_at_the_next_event(
    closed_log: tuple[Path, list[Event]], tmp_path: Path
) -> None:
    path, events = closed_log
    forged = {**events[2].content(), "patient": "MRN-9999"}
    digest = event_hash(events[2].prev_hash, forged)
    copy = tampered_copy(path, tmp_path, "UPDATE events SET patient = 'MRN-9999', hash = ? WHERE seq = 3",
                         params=(digest,))  # fmt: skip
    with pytest.raises(ChainBroken) as info:
        verify_file(copy)
    assert info.value.seq == 4
    assert "prev_hash" in info.value.reason


def test_a_live_store_sees_tampering_by_another_connection(store: EventStore) -> None:
    store.append(new(5))
    run_sql(store.path, 'UPDATE events SET payload = \'{"alarm":"x"}\' WHERE seq = 3')
    with pytest.raises(ChainBroken) as info:
        store.verify()
    assert info.value.seq == 3
    run_sql(store.path, "UPDATE events SET payload = '{oops' WHERE seq = 2")
    with pytest.raises(ChainBroken, match="not valid JSON") as info:
        store.read_after(0)
    assert info.value.seq == 2


def test_a_deleted_tail_is_not_detectable_by_the_chain_alone(
    closed_log: tuple[Path, list[Event]], tmp_path: Path
) -> None:
    # Documented limit: truncating the newest events leaves a valid chain. The copies delivered
    # upstream carry seq and hash: the last hash verify reports no longer matches (docs/events.md).
    path, events = closed_log
    copy = tampered_copy(path, tmp_path, "DELETE FROM events WHERE seq >= 5")
    result = verify_file(copy)
    assert result.last_seq == 4
    assert result.last_hash != events[-1].hash


def test_a_rewritten_chain_verifies_but_its_last_hash_differs(
    closed_log: tuple[Path, list[Event]], tmp_path: Path
) -> None:
    # Documented limit: whoever recomputes every hash from an edit onwards makes a valid chain; what
    # reveals it is the last hash, compared with the copy delivered upstream.
    path, events = closed_log
    prev, updates = events[2].prev_hash, []
    for e in events[2:]:
        content = {**e.content(), "patient": "MRN-9999"} if e.seq == 3 else e.content()
        digest = event_hash(prev, content)
        updates.append((prev, digest, e.seq))
        prev = digest
    copy = tampered_copy(path, tmp_path, "UPDATE events SET patient = 'MRN-9999' WHERE seq = 3")
    db = sqlite3.connect(copy)
    db.executemany("UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?", updates)
    db.commit()
    db.close()
    result = verify_file(copy)
    assert result.count == 6
    assert result.last_hash != events[-1].hash


# --- tampering with a pruned log: the anchor is checked against eventlog.pruned -----------------


@pytest.fixture
def pruned_log(tmp_path: Path) -> tuple[Path, list[Event]]:
    """A closed log whose events 1-6 were deleted by the retention rule (pruned event: seq 16)."""
    path = tmp_path / "log" / "events.sqlite3"
    with opened(path, FakeClock(), Retention(max_events=10, destinations=("mqtt",))) as s:
        events = s.append(new(15))
        s.mark_delivered("mqtt", 12)
        written = s.maintain()
        assert [(e.seq, e.type) for e in written] == [(16, "eventlog.pruned")]
        events += written
        events += s.append(new(4))
    return path, events


def test_a_pruned_log_verifies_and_says_where_it_starts(pruned_log: tuple[Path, list[Event]]) -> None:
    path, events = pruned_log
    pruned = events[15]
    assert pruned.payload == {"count": 6, "through_seq": 6, "through_hash": events[5].hash}
    result = verify_file(path)
    assert (result.first_seq, result.pruned_through, result.last_seq) == (7, 6, 20)
    assert result.count == 14
    assert result.last_hash == events[-1].hash
    assert result.destinations == {"mqtt": 12}
    assert read_column(path, "SELECT seq, hash FROM chain_anchor") == [(6, events[5].hash)]


def _forge_anchor(through: int, events: Sequence[Event]) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    return (
        f"DELETE FROM events WHERE seq <= {through}",
        "INSERT OR REPLACE INTO chain_anchor VALUES (1, ?, ?)",
    ), (through, events[through - 1].hash)


def test_old_events_deleted_with_a_forged_anchor_are_found(
    closed_log: tuple[Path, list[Event]], tmp_path: Path
) -> None:
    # Delete events 1-3 and forge the anchor so the remaining chain verifies from there: there is
    # no eventlog.pruned event that records deleting them.
    path, events = closed_log
    statements, params = _forge_anchor(3, events)
    copy = tampered_copy(path, tmp_path, *statements, params=params)
    with pytest.raises(ChainBroken, match="outside the retention rule") as info:
        verify_file(copy)
    assert info.value.seq == 4


@pytest.mark.parametrize(
    "through",
    [
        pytest.param(10, id="more-deleted-than-pruned"),
        pytest.param(16, id="the-pruned-event-deleted-too"),
        pytest.param(18, id="past-the-pruned-event"),
    ],
)
def test_a_pruned_log_with_more_deleted_and_a_forged_anchor_is_found(
    pruned_log: tuple[Path, list[Event]], tmp_path: Path, through: int
) -> None:
    path, events = pruned_log
    statements, params = _forge_anchor(through, events)
    copy = tampered_copy(path, tmp_path, *statements, params=params)
    with pytest.raises(ChainBroken, match="outside the retention rule") as info:
        verify_file(copy)
    assert info.value.seq == through + 1


@pytest.mark.parametrize(
    ("statements", "seq"),
    [
        pytest.param(("DELETE FROM chain_anchor",), 1, id="anchor-deleted"),
        pytest.param(("UPDATE chain_anchor SET seq = 5",), 6, id="anchor-moved-back"),
        pytest.param(("UPDATE chain_anchor SET hash = '" + "f" * 64 + "'",), 7, id="anchor-hash-edited"),
        pytest.param(
            ("UPDATE events SET payload = replace(payload, '\"count\":6', '\"count\":5') WHERE seq = 16",),
            16,
            id="pruned-event-edited",
        ),
        pytest.param(("DELETE FROM events WHERE seq = 7",), 7, id="first-kept-event-deleted"),
    ],
)
def test_tampering_with_a_pruned_log_is_found(
    pruned_log: tuple[Path, list[Event]], tmp_path: Path, statements: tuple[str, ...], seq: int
) -> None:
    path, _ = pruned_log
    copy = tampered_copy(path, tmp_path, *statements)
    with pytest.raises(ChainBroken) as info:
        verify_file(copy)
    assert info.value.seq == seq


# --- retention ------------------------------------------------------------------------------------

MQTT_ONLY = ("mqtt",)


def append_and_maintain(store: EventStore, n: int) -> None:
    """Append ``n`` events one commit at a time, applying retention after each (as the writer may)."""
    for _ in range(n):
        store.append(new(1))
        store.maintain()


def test_nothing_undelivered_is_deleted_however_far_above_the_cap(tmp_path: Path) -> None:
    rule = Retention(max_events=10, warn_percent=80, destinations=MQTT_ONLY)
    with opened(tmp_path / "events.sqlite3", retention=rule) as s:
        append_and_maintain(s, 60)
        assert s.count() == 61  # 60 + one near-capacity warning, six times the cap
        assert s.first_seq == 1
        assert s.verify() == 61
        assert s.undelivered() == 61
        events = all_events(s)
        assert of_type(events, EventType.LOG_PRUNED) == []
        (warning,) = of_type(events, EventType.LOG_NEAR_CAPACITY)
        assert warning.seq == 9  # written after the 8th event: 8 undelivered = 80 % of 10
        assert warning.payload == {
            "undelivered": 8,
            "max_events": 10,
            "percent": 80,
            "oldest_undelivered_time": "2026-01-01T00:00:00.000Z",
            "destinations": ["mqtt"],
        }


def test_the_near_capacity_warning_has_hysteresis(tmp_path: Path) -> None:
    rule = Retention(max_events=100, warn_percent=80, destinations=MQTT_ONLY)
    with opened(tmp_path / "events.sqlite3", retention=rule) as s:

        def warnings() -> list[int]:
            return [e.seq for e in of_type(all_events(s), EventType.LOG_NEAR_CAPACITY)]

        s.append(new(80))
        assert [e.type for e in s.maintain()] == ["eventlog.near_capacity"]  # 80 undelivered
        assert warnings() == [81]
        s.mark_delivered("mqtt", 4)  # 77 undelivered: below 80 but not below 75
        assert s.maintain() == []
        s.append(new(3))  # 80 again
        assert s.maintain() == []
        assert warnings() == [81]
        s.mark_delivered("mqtt", 10)  # 74 undelivered: below 75, the warning is re-armed
        assert s.maintain() == []
        s.append(new(5))
        assert s.maintain() == []  # 79
        s.append(new(1))
        assert [e.type for e in s.maintain()] == ["eventlog.near_capacity"]  # 80
        assert warnings() == [81, 91]
        assert all_events(s)[-1].payload["undelivered"] == 80


def test_pruning_deletes_only_what_was_delivered_and_at_most_down_to_90_percent(tmp_path: Path) -> None:
    rule = Retention(max_events=20, warn_percent=80, destinations=MQTT_ONLY)
    with opened(tmp_path / "events.sqlite3", retention=rule) as s:
        events = s.append(new(40))
        s.maintain()  # the near-capacity warning, seq 41; nothing is delivered, nothing deleted
        assert s.count() == 41
        s.mark_delivered("mqtt", 15)
        written = s.maintain()
        assert [e.type for e in written] == ["eventlog.pruned"]
        assert written[0].payload == {"count": 15, "through_seq": 15, "through_hash": events[14].hash}
        assert s.first_seq == 16  # the delivery limits it, not the cap
        assert s.count() == 42 - 15
        assert s.maintain() == []  # nothing more may go
        s.mark_delivered("mqtt", s.last_seq)
        written = s.maintain()
        assert written[0].payload["through_seq"] == 42 - 18  # the cap limits it: 90 % of 20 kept
        assert written[0].payload["count"] == 24 - 15
        assert s.first_seq == 25
        assert s.count() == 18 + 1  # 90 % of the cap, and the eventlog.pruned event
        assert s.maintain() == []
        assert s.verify() == 19
        assert [e.seq for e in all_events(s)] == list(range(25, 44))


def test_the_chain_verifies_after_many_prunes_and_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    rule = Retention(max_events=10, warn_percent=80, destinations=MQTT_ONLY)
    clock = FakeClock()
    for _ in range(3):
        with opened(path, clock, rule) as s:
            for _ in range(5):
                clock.advance(1)
                s.append(new(7))
                s.mark_delivered("mqtt", s.last_seq - 2)
                s.maintain()
                assert s.verify() == s.count()
            first, last = s.first_seq, s.last_seq
        with opened(path, clock, rule) as s:  # the anchor was persisted
            assert (s.first_seq, s.last_seq) == (first, last)
            assert s.verify() == last - first + 1
        result = verify_file(path)
        assert (result.first_seq, result.last_seq, result.pruned_through) == (first, last, first - 1)
    with opened(path, clock, rule) as s:
        events = all_events(s)
        assert len(of_type(events, EventType.LOG_PRUNED)) >= 1
        assert [e.seq for e in events] == list(range(s.first_seq, s.last_seq + 1))
        assert s.last_seq - s.first_seq + 1 <= 10 + 7 + 1  # never more than the cap, one batch, the pruned


def test_without_destinations_everything_old_may_go(tmp_path: Path) -> None:
    rule = Retention(max_events=10, warn_percent=80)
    with opened(tmp_path / "events.sqlite3", retention=rule) as s:
        s.append(new(25))
        written = s.maintain()
        assert [e.type for e in written] == ["eventlog.pruned"]  # no near-capacity: nothing waits
        assert written[0].payload["through_seq"] == 25 - 9
        assert s.first_seq == 17
        assert s.verify() == 10


def test_without_a_cap_nothing_is_ever_deleted(store: EventStore) -> None:
    store.append(new(50))
    store.mark_delivered("mqtt", 50)
    assert store.maintain() == []
    assert store.count() == 50


def test_one_retention_pass_deletes_at_most_a_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventlog_module, "PRUNE_CHUNK", 7)  # 10,000 in production: one short transaction
    with opened(tmp_path / "events.sqlite3", retention=Retention(max_events=10)) as s:
        s.append(new(40))
        assert [e.payload["through_seq"] for e in s.maintain()] == [7]
        assert [e.payload["through_seq"] for e in s.maintain()] == [14]
        assert s.verify() == s.count()


def test_read_after_across_a_pruned_range_starts_at_the_oldest_kept(
    pruned_log: tuple[Path, list[Event]],
) -> None:
    path, events = pruned_log
    with opened(path) as s:
        assert [e.seq for e in s.read_after(0, limit=3)] == [7, 8, 9]
        assert [e.seq for e in s.read_after(3, limit=3)] == [7, 8, 9]
        assert s.read_after(7, limit=2) == events[7:9]
        assert s.read_after(20) == []
        assert s.time_of(3) is None
        assert s.time_of(7) == events[6].time


def test_a_failed_near_capacity_warning_is_written_later(tmp_path: Path) -> None:
    # Long destination names make the warning large: it needs pages the batch did not.
    destinations = tuple(f"dest-{i:02d}-" + "x" * 2000 for i in range(16))
    rule = Retention(max_events=4, warn_percent=50, destinations=destinations)
    with opened(tmp_path / "events.sqlite3", retention=rule) as s:
        s.append(new(3))
        limit_growth(s._db, 1)
        with pytest.raises(EventLogError, match="the disk is full"):
            s.maintain()
        assert s.count() == 3
        lift_limit(s._db)
        assert [e.type for e in s.maintain()] == ["eventlog.near_capacity"]
        assert s.verify() == 4


async def test_the_writer_applies_retention_by_itself(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "events.sqlite3"
    rule = Retention(max_events=20, warn_percent=80)
    async with running_log(path, clock, rule) as log:
        for _ in range(6):
            await asyncio.gather(*(log.append(EventType.GATEWAY_STOPPED) for _ in range(10)))
            assert (await log.stats())["stored"] <= 20
        stats = await log.stats()
        assert stats["first_seq"] > 1
        assert log.store.verify() == stats["stored"]
        assert of_type(await log.read_after(0), EventType.LOG_PRUNED)
    assert verify_file(path).pruned_through == stats["first_seq"] - 1


async def test_the_writer_deletes_only_what_was_delivered(tmp_path: Path, clock: FakeClock) -> None:
    rule = Retention(max_events=20, warn_percent=80, destinations=MQTT_ONLY)
    async with running_log(tmp_path / "events.sqlite3", clock, rule) as log:
        for _ in range(40):
            await log.append(EventType.GATEWAY_STOPPED)
        assert (await log.stats())["first_seq"] == 1
        await log.mark_delivered("mqtt", 12)
        assert await log.delivered_seq("mqtt") == 12
        await log.append(EventType.GATEWAY_STOPPED)  # a commit over the cap: retention runs
        stats = await log.stats()
        assert stats["first_seq"] == 13
        assert log.store.verify() == stats["stored"]


async def test_retention_runs_every_maintain_every_events_below_the_cap(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Under the cap retention is not needed on every commit; the near-capacity check runs after the
    # first commit and then every MAINTAIN_EVERY events.
    rule = Retention(max_events=1000, warn_percent=10, destinations=MQTT_ONLY)
    async with running_log(tmp_path / "events.sqlite3", clock, rule) as log:
        await log.append(EventType.GATEWAY_STARTED, sample(EventType.GATEWAY_STARTED))  # checked: 1
        await asyncio.gather(*(log.append(EventType.GATEWAY_STOPPED) for _ in range(MAINTAIN_EVERY - 1)))
        assert log.last_seq == MAINTAIN_EVERY
        assert of_type(await log.read_after(0, 1000), EventType.LOG_NEAR_CAPACITY) == []  # 25 %, unchecked
        await log.append(EventType.GATEWAY_STOPPED)
        (warning,) = of_type(await log.read_after(0, 1000), EventType.LOG_NEAR_CAPACITY)
        assert warning.seq == MAINTAIN_EVERY + 2
        assert warning.payload["undelivered"] == MAINTAIN_EVERY + 1


# --- the wall clock -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        pytest.param(-3600.0, "-3600.000", id="back-an-hour"),
        pytest.param(90.25, "90.250", id="forward"),
        pytest.param(CLOCK_STEP_S, "2.000", id="at-the-threshold"),
        pytest.param(-CLOCK_STEP_S, "-2.000", id="back-at-the-threshold"),
    ],
)
def test_a_wall_clock_step_between_commits_is_recorded(
    store: EventStore, clock: FakeClock, step: float, expected: str
) -> None:
    store.append(new(1))  # at 00:00:00
    clock.advance(5)
    clock.step_wall(step)
    returned = store.append(new(2))
    assert [e.seq for e in returned] == [3, 4]  # the clock event is not among those returned ...
    assert all(e.type == "channel.state_changed" for e in returned)
    adjusted = all_events(store)[1]  # ... but is in the log, first in that commit
    assert adjusted.seq == 2
    assert adjusted.type == "gateway.clock_adjusted"
    assert adjusted.payload["step_s"] == expected
    assert adjusted.payload["wall_before"] == "2026-01-01T00:00:05.000Z"  # where it should have been
    assert adjusted.time == returned[0].time == adjusted.payload["wall_after"]
    assert store.verify() == 4


def test_the_recorded_step_names_both_times(store: EventStore, clock: FakeClock) -> None:
    store.append(new(1))
    clock.advance(5)
    clock.step_wall(-3600)
    store.append(new(1))
    assert all_events(store)[1].payload == {
        "step_s": "-3600.000",
        "wall_before": "2026-01-01T00:00:05.000Z",
        "wall_after": "2025-12-31T23:00:05.000Z",
    }


@pytest.mark.parametrize("drift", [0.5, -1.5, 1.999, -1.999])
def test_a_small_drift_is_not_a_step(store: EventStore, clock: FakeClock, drift: float) -> None:
    store.append(new(1))
    clock.advance(60)
    clock.step_wall(drift)
    store.append(new(1))
    clock.advance(3600)  # both clocks: time passing is not a step
    store.append(new(1))
    assert of_type(all_events(store), EventType.CLOCK_ADJUSTED) == []


def test_small_drifts_do_not_add_up_to_a_step(store: EventStore, clock: FakeClock) -> None:
    for _ in range(5):
        store.append(new(1))
        clock.step_wall(1.5)
    assert of_type(all_events(store), EventType.CLOCK_ADJUSTED) == []


def test_a_step_before_a_retention_pass_is_recorded(tmp_path: Path, clock: FakeClock) -> None:
    with opened(tmp_path / "events.sqlite3", clock, Retention(max_events=10)) as s:
        s.append(new(20))
        clock.step_wall(-600)
        written = s.maintain()
        assert [e.type for e in written] == ["gateway.clock_adjusted", "eventlog.pruned"]
        assert written[0].payload["step_s"] == "-600.000"
        s.append(new(1))
        assert len(of_type(all_events(s), EventType.CLOCK_ADJUSTED)) == 1
        assert s.verify() == s.count()


def test_a_refused_commit_does_not_lose_a_step(store: EventStore, clock: FakeClock) -> None:
    store.append(new(1))
    clock.step_wall(30)
    limit_growth(store._db, 1)
    with pytest.raises(EventLogError, match="the disk is full"):
        store.append([big_event()])
    lift_limit(store._db)
    store.append(new(1))
    assert [e.type for e in all_events(store)][1:] == ["gateway.clock_adjusted", "channel.state_changed"]


async def test_the_async_log_records_a_step_but_returns_the_callers_event(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with running_log(tmp_path / "events.sqlite3", clock) as log:
        await log.append(EventType.GATEWAY_STARTED, sample(EventType.GATEWAY_STARTED))
        clock.step_wall(-120)
        mine = await log.append(EventType.ALARM_RAISED, sample(EventType.ALARM_RAISED))
        assert mine.type == "channel.alarm_raised"
        assert mine.seq == 3
        events = await log.read_after(0)
        assert [e.type for e in events] == [
            "gateway.started",
            "gateway.clock_adjusted",
            "channel.alarm_raised",
        ]
        assert events[1].payload["step_s"] == "-120.000"


# --- opening: damaged, foreign, old, read-only, in use --------------------------------------------


def real_log_bytes(tmp_path: Path) -> bytes:
    """The bytes of a closed real log of a few dozen pages."""
    path = tmp_path / "source" / "events.sqlite3"
    with opened(path) as s:
        for _ in range(10):
            s.append([ev(EventType.SCAN_REJECTED, refs=REFS) for _ in range(20)])
    data = path.read_bytes()
    assert len(data) > 20 * 4096
    return data


@pytest.mark.parametrize(
    "keep_percent",
    [
        pytest.param(None, id="garbage"),
        pytest.param(10, id="truncated-early"),
        pytest.param(50, id="truncated-middle"),
        pytest.param(95, id="truncated-late"),
    ],
)
def test_a_damaged_file_is_refused_clearly_and_left_untouched(
    tmp_path: Path, keep_percent: int | None
) -> None:
    if keep_percent is None:
        data = random.Random(13).randbytes(64 * 1024)  # deterministic noise
    else:  # a real log cut short, as a failed copy or a full SD card leaves it
        whole = real_log_bytes(tmp_path)
        data = whole[: len(whole) * keep_percent // 100]
    path = tmp_path / "state" / "events.sqlite3"
    path.parent.mkdir()
    path.write_bytes(data)
    with pytest.raises(EventLogError) as info:
        EventStore(path, "gw-1", FakeClock())
    detail = info.value.detail
    assert "damaged" in detail
    assert "left untouched" in detail
    assert "move it aside" in detail
    assert path.read_bytes() == data
    with pytest.raises(EventLogError, match="damaged"):
        verify_file(path)
    assert path.read_bytes() == data


def test_a_page_damaged_inside_the_file_is_reported_by_verify(tmp_path: Path) -> None:
    # Known limit: opening reads only the header, the schema and the newest event (a full integrity
    # check reads the whole file, minutes on an SD card), so damage inside the file is found by
    # verify, as an EventLogError that says so, not a traceback.
    data = bytearray(real_log_bytes(tmp_path))
    middle = len(data) // 4096 // 2 * 4096
    data[middle : middle + 4096] = b"\xa5" * 4096
    path = tmp_path / "state" / "events.sqlite3"
    path.parent.mkdir()
    path.write_bytes(bytes(data))
    with pytest.raises(EventLogError, match=r"cannot read.*: database disk image is malformed"):
        verify_file(path)
    with (
        opened(path) as s,
        pytest.raises(EventLogError, match=r"cannot read.*: database disk image is malformed"),
    ):
        s.verify()


def test_a_log_of_an_older_format_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    run_sql(path, "CREATE TABLE events (seq INTEGER PRIMARY KEY, payload TEXT)",
            "INSERT INTO events VALUES (1, '{\"n\": 1}')")  # fmt: skip
    before = path.read_bytes()
    with pytest.raises(EventLogError, match="event-log format 0, this gateway writes format 1") as info:
        EventStore(path, "gw-1", FakeClock())
    assert "left untouched" in info.value.detail
    assert path.read_bytes() == before
    with pytest.raises(EventLogError, match="format 0"):
        verify_file(path)
    EventStore(tmp_path / "other.sqlite3", "gw-1", FakeClock()).close()  # the lock was released
    with pytest.raises(EventLogError, match="format 0"):
        EventStore(path, "gw-1", FakeClock())  # ... and this one's too


def test_a_log_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    with opened(path) as s:
        s.append(new(1))
    run_sql(path, "PRAGMA user_version = 2")
    before = path.read_bytes()
    with pytest.raises(EventLogError, match="event-log format 2, this gateway writes format 1"):
        EventStore(path, "gw-1", FakeClock())
    assert path.read_bytes() == before


def test_an_sqlite_database_that_is_not_an_event_log_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    run_sql(path, "CREATE TABLE patients (mrn TEXT)", "INSERT INTO patients VALUES ('MRN-1')")
    before = path.read_bytes()
    with pytest.raises(EventLogError, match="not a pumpgw event log") as info:
        EventStore(path, "gw-1", FakeClock())
    assert "patients" in info.value.detail
    assert path.read_bytes() == before
    assert read_column(path, "SELECT name FROM sqlite_master") == [("patients",)]


def test_an_empty_file_becomes_a_new_log(tmp_path: Path) -> None:
    # A zero-length file is what SQLite itself leaves after creating a database file and dying.
    path = tmp_path / "events.sqlite3"
    path.write_bytes(b"")
    with opened(path) as s:
        assert s.append(new(1))[0].seq == 1


def test_a_location_whose_parent_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    # Fails for root too: no permission check is involved, the path cannot exist.
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EventLogError, match="cannot open") as info:
        EventStore(blocker / "state" / "events.sqlite3", "gw", FakeClock())
    assert str(blocker) in str(info.value)
    assert blocker.read_text() == ""


NOBODY = 65534


def open_without_privileges(workdir: Path, relative: str) -> str:
    """Try to open the log at ``workdir/relative`` as a user held to file permissions; return the
    EventLogError's detail, or "opened".

    As an ordinary user this runs here. As root (CI) file permissions do not apply (root has
    CAP_DAC_OVERRIDE), so a chmod would prove nothing: a forked child changes into ``workdir`` and
    drops to uid/gid 65534 ("nobody") before opening, and the kernel then refuses its writes as it
    would the gateway's service user. The relative path avoids pytest's root-only (0700) base dir.
    """
    if os.geteuid() != 0:
        try:
            EventStore(workdir / relative, "gw", FakeClock()).close()
        except EventLogError as exc:
            return exc.detail
        return "opened"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.chdir(workdir)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                EventStore(Path(relative), "gw", FakeClock()).close()
                answer = "opened"
            except EventLogError as exc:
                answer = exc.detail
        except BaseException as exc:
            answer = f"the unprivileged child failed: {exc!r}"
        finally:
            os.write(write_end, answer.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)  # let pytest clean up


def test_a_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    # Genuinely refused by the kernel, as root too (see open_without_privileges).
    tmp_path.chmod(0o755)
    (tmp_path / "state").mkdir()
    with read_only_dir(tmp_path / "state"):
        answer = open_without_privileges(tmp_path, "state/events.sqlite3")
    assert "is not writable by this user" in answer
    assert "state" in answer
    assert "events.sqlite3-wal" in answer
    assert list((tmp_path / "state").iterdir()) == []


def test_an_existing_log_in_a_directory_made_read_only_is_a_clear_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "state" / "events.sqlite3"
    with opened(path) as s:
        s.append(new(3))
    if os.geteuid() == 0:  # the log belongs to the service user, as it would in production
        for f in path.parent.iterdir():
            os.chown(f, NOBODY, NOBODY)
    before = path.read_bytes()
    with read_only_dir(path.parent):
        answer = open_without_privileges(tmp_path, "state/events.sqlite3")
    assert "is not writable by this user" in answer
    assert path.read_bytes() == before
    assert verify_file(path).count == 3


def test_an_unreachable_directory_is_an_event_log_error_not_a_traceback(tmp_path: Path) -> None:
    # The state directory's parent cannot even be searched: 0700 and root's, seen by nobody (as
    # root), or 0000 (as an ordinary user). Found by this test: the error report itself raised
    # PermissionError (Path.exists) instead of EventLogError.
    tmp_path.chmod(0o755)
    (tmp_path / "private").mkdir(mode=0o700)
    try:
        if os.geteuid() != 0:
            (tmp_path / "private").chmod(0o000)
        answer = open_without_privileges(tmp_path, "private/state/events.sqlite3")
    finally:
        (tmp_path / "private").chmod(0o755)
    assert "Permission denied" in answer
    assert not answer.startswith("the unprivileged child failed")


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    first = EventStore(path, "gw-1", FakeClock())
    try:
        first.append(new(2))
        with pytest.raises(EventLogError, match=rf"in use by another process \(pid {os.getpid()}\)"):
            EventStore(path, "gw-2", FakeClock())
        assert first.append(new(1))[0].seq == 3  # the refused one did not take the first's lock
        with pytest.raises(EventLogError, match="in use by another process"):
            EventStore(path, "gw-2", FakeClock())
        assert verify_file(path).count == 3  # readers need no lock
    finally:
        first.close()
    with opened(path) as second:
        assert second.append(new(1))[0].seq == 4
        assert second.verify() == 4


def test_a_writer_in_another_process_is_named_by_its_pid(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    holder = (
        "import sys; from pathlib import Path\n"
        "from pumpgw.gateway.clock import FakeClock\n"
        "from pumpgw.gateway.eventlog import EventStore\n"
        "s = EventStore(Path(sys.argv[1]), 'gw-other', FakeClock())\n"
        "print('open', flush=True)\n"
        "sys.stdin.read()\n"  # hold the log until the test closes our stdin
        "s.close()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", holder, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            assert child.stdout.readline() == "open\n"
            with pytest.raises(EventLogError, match=rf"in use by another process \(pid {child.pid}\)"):
                EventStore(path, "gw-1", FakeClock())
        finally:
            child.stdin.close()
            child.wait(timeout=30)
    assert child.returncode == 0
    with opened(path) as s:  # the lock went with the process
        assert s.append(new(1))[0].seq == 1


async def test_a_second_async_log_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "events.sqlite3"
    async with running_log(path, clock):
        other = EventLog(path, "gw-2", clock)
        with pytest.raises(EventLogError, match="in use by another process"):
            await other.open()
        await other.close()


# --- a full disk ----------------------------------------------------------------------------------


def test_a_full_disk_refuses_the_commit_whole_and_the_log_recovers(store: EventStore) -> None:
    store.append(new(3))
    limit_growth(store._db, 8)
    committed = store.last_seq
    with pytest.raises(EventLogError) as info:  # noqa: PT012 - the loop is how the disk fills up
        for _ in range(50):
            store.append([big_event(16)])
            committed = store.last_seq
    assert "the disk is full" in info.value.detail
    assert "refused until space is freed" in info.value.detail
    assert store.last_seq == committed
    assert store.count() == committed
    assert store.verify() == committed
    with pytest.raises(EventLogError, match="the disk is full"):  # a batch: none of it is kept
        store.append([ev(), ev(), big_event()])
    assert store.count() == committed
    assert not store._db.in_transaction
    lift_limit(store._db)
    after = store.append([ev(), big_event()])
    assert [e.seq for e in after] == [committed + 1, committed + 2]
    assert after[0].prev_hash == all_events(store)[committed - 1].hash
    assert store.verify() == committed + 2


async def test_a_full_disk_turns_health_bad_and_the_recovery_is_recorded(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with running_log(tmp_path / "events.sqlite3", clock) as log:
        await log.append(EventType.GATEWAY_STARTED, sample(EventType.GATEWAY_STARTED))
        assert log.health.ok
        limit_growth(log.store._db, 1)  # the writer is idle: nothing else uses the connection now
        clock.advance(1)
        with pytest.raises(EventLogError, match="the disk is full"):
            await log.append(EventType.SCAN_ACCEPTED, big_event().payload)
        health = log.health
        assert not health.ok
        assert health.reason is not None
        assert "the disk is full" in health.reason
        assert health.since == "2026-01-01T00:00:01.000Z"
        assert health.refused == 1
        clock.advance(1)
        results = await asyncio.gather(
            *(log.append(EventType.SCAN_ACCEPTED, big_event().payload) for _ in range(2)),
            return_exceptions=True,
        )
        assert all(isinstance(r, EventLogError) for r in results)
        assert log.health.refused == 3
        assert log.health.since == "2026-01-01T00:00:01.000Z"
        stats = await log.stats()
        assert stats["health"] == {
            "ok": False,
            "reason": log.health.reason,
            "since": health.since,
            "refused": 3,
        }
        assert log.health.reason is not None
        assert "writing 2 event(s)" in log.health.reason  # the latest failure's reason
        assert log.last_seq == 1
        lift_limit(log.store._db)
        clock.advance(1)
        e = await log.append(EventType.ALARM_RAISED, sample(EventType.ALARM_RAISED))
        assert e.seq == 2
        assert log.health.ok
        assert log.health.refused == 0
        events = await log.read_after(0)
        assert [x.type for x in events] == [
            "gateway.started",
            "channel.alarm_raised",
            "eventlog.write_recovered",
        ]
        recovered = events[2].payload
        assert recovered["refused"] == 3
        assert recovered["first_failure"] == "2026-01-01T00:00:01.000Z"
        assert recovered["last_failure"] == "2026-01-01T00:00:02.000Z"
        assert "the disk is full" in recovered["error"]
        assert log.store.verify() == 3


async def test_a_failed_retention_pass_refuses_nothing_and_is_tried_again(
    tmp_path: Path, clock: FakeClock
) -> None:
    destinations = tuple(f"dest-{i:02d}-" + "x" * 2000 for i in range(16))  # a large warning
    rule = Retention(max_events=4, warn_percent=50, destinations=destinations)
    async with running_log(tmp_path / "events.sqlite3", clock, rule) as log:
        for _ in range(4):
            await log.append(EventType.GATEWAY_STOPPED)
        limit_growth(log.store._db, 4)  # room for a small event, not for the 32 KB warning
        e = await log.append(EventType.GATEWAY_STOPPED)  # over the cap: retention runs and fails
        assert e.seq == 5  # accepted: the failed pass after its commit does not refuse it
        assert log.health.ok  # nothing was refused
        assert not of_type(await log.read_after(0), EventType.LOG_NEAR_CAPACITY)
        lift_limit(log.store._db)
        await log.append(EventType.GATEWAY_STOPPED)
        assert of_type(await log.read_after(0), EventType.LOG_NEAR_CAPACITY)
        assert log.health.ok


# --- stats ----------------------------------------------------------------------------------------


async def test_stats_report_the_store_the_cap_and_the_backlog(tmp_path: Path, clock: FakeClock) -> None:
    rule = Retention(max_events=100, warn_percent=80, destinations=MQTT_ONLY)
    async with running_log(tmp_path / "events.sqlite3", clock, rule) as log:
        for _ in range(10):
            await log.append(EventType.GATEWAY_STOPPED)
        await log.mark_delivered("mqtt", 4)
        assert await log.stats() == {
            "stored": 10,
            "first_seq": 1,
            "last_seq": 10,
            "max_events": 100,
            "undelivered": 6,
            "percent_of_cap": 6,
            "near_capacity": False,
            "health": {"ok": True, "reason": None, "since": None, "refused": 0},
        }
        assert await log.time_of(1) == "2026-01-01T00:00:00.000Z"
        assert await log.time_of(11) is None


async def test_stats_without_a_cap(tmp_path: Path, clock: FakeClock) -> None:
    async with running_log(tmp_path / "events.sqlite3", clock) as log:
        stats = await log.stats()
        assert (stats["stored"], stats["first_seq"], stats["last_seq"]) == (0, 1, 0)
        assert (stats["max_events"], stats["percent_of_cap"], stats["near_capacity"]) == (None, None, False)
        await log.append(EventType.GATEWAY_STOPPED)
        assert (await log.stats())["undelivered"] == 0  # no destinations: nothing waits


async def test_stats_near_capacity_follow_the_backlog(tmp_path: Path, clock: FakeClock) -> None:
    rule = Retention(max_events=10, warn_percent=50, destinations=MQTT_ONLY)
    async with running_log(tmp_path / "events.sqlite3", clock, rule) as log:
        for _ in range(5):
            await log.append(EventType.GATEWAY_STOPPED)
        stats = await log.stats()
        assert (stats["undelivered"], stats["percent_of_cap"], stats["near_capacity"]) == (5, 50, True)
        await log.mark_delivered("mqtt", log.last_seq)
        stats = await log.stats()
        assert (stats["undelivered"], stats["near_capacity"]) == (0, False)


# --- property: any sequence of appends and restarts keeps one verifiable chain ------------------


@dataclass(frozen=True)
class Append:
    events: list[NewEvent]


@dataclass(frozen=True)
class Reopen:
    pass


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class StepWall:
    seconds: float


_texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)  # no lone surrogates
_new_events = st.builds(
    lambda t, pump, channel, refs: NewEvent(t, sample(t), pump, channel, refs),
    st.sampled_from(list(SAMPLES)),
    st.none() | _texts,
    st.none() | st.integers(0, 8),
    st.builds(Refs, st.none() | _texts, st.none() | _texts, st.none() | _texts),
)
_steps = st.lists(
    st.one_of(
        st.builds(Append, st.lists(_new_events, min_size=1, max_size=5)),
        st.just(Reopen()),
        st.builds(Advance, st.integers(0, 5000).map(lambda ms: ms / 1000)),
        st.builds(StepWall, st.sampled_from([-86_400.0, -3.0, -0.5, 0.5, 3.0, 3600.0])),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=_steps)
def test_any_sequence_of_appends_and_restarts_keeps_one_chain(
    steps: list[Append | Reopen | Advance | StepWall],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.sqlite3"
        clock = FakeClock()
        returned: list[Event] = []
        store = EventStore(path, "gw-p", clock)
        try:
            for step in steps:
                match step:
                    case Append(events):
                        out = store.append(events)
                        assert [(e.type, e.payload, e.pump, e.channel) for e in out] == [
                            (str(n.type), n.payload, n.pump, n.channel) for n in events
                        ]
                        assert [(e.patient, e.order, e.clinician) for e in out] == [
                            (n.refs.patient, n.refs.order, n.refs.clinician) for n in events
                        ]
                        returned += out
                    case Reopen():
                        store.close()
                        store = EventStore(path, "gw-p", clock)
                    case Advance(seconds):
                        clock.advance(seconds)
                    case StepWall(seconds):
                        clock.step_wall(seconds)
            stored = all_events(store)
            assert store.verify() == len(stored)
        finally:
            store.close()
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    ids = [uuid.UUID(e.id) for e in stored]
    assert all(a.int < b.int for a, b in itertools.pairwise(ids))
    assert all(i.version == 7 for i in ids)
    by_seq = {e.seq: e for e in stored}
    assert all(by_seq[e.seq] == e for e in returned)  # what the caller got is what is stored
    others = [e for e in stored if e.seq not in {r.seq for r in returned}]
    assert all(e.type == "gateway.clock_adjusted" for e in others)  # the log adds nothing else
