"""The event log: committed before accepted, hash-chained, tamper evident, group-committed."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import ChainBroken, EventLogError
from pumpgw.gateway.eventlog import EventLog, EventStore
from pumpgw.gateway.events import EventType, NewEvent


def new(n: int) -> list[NewEvent]:
    return [NewEvent(EventType.CHANNEL_STATE, {"n": i}, pump="p1", channel=1) for i in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = EventStore(tmp_path / "events.sqlite3", "gw-1", FakeClock())
    yield s
    s.close()


@pytest.mark.hazard("HAZ-013")
def test_append_assigns_seq_ids_times_and_chain(store: EventStore) -> None:
    events = store.append(new(3))
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == "0" * 64
    assert events[1].prev_hash == events[0].hash
    assert all(uuid.UUID(e.id).version == 7 for e in events)
    assert [e.id for e in events] == sorted(e.id for e in events)  # time-ordered
    assert events[0].time == "2026-01-01T00:00:00.000Z"
    assert store.verify() == 3


@pytest.mark.hazard("HAZ-013")
def test_ids_stay_ordered_when_the_wall_clock_steps_back(tmp_path: Path) -> None:
    clock = FakeClock()
    s = EventStore(tmp_path / "e.sqlite3", "gw", clock)
    first = s.append(new(1))[0]
    clock.step_wall(-3600)
    second = s.append(new(1))[0]
    assert second.id > first.id
    s.close()


@pytest.mark.hazard("HAZ-013")
def test_the_chain_continues_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite3"
    s = EventStore(path, "gw", FakeClock())
    s.append(new(2))
    s.close()
    s = EventStore(path, "gw", FakeClock())
    assert s.append(new(1))[0].seq == 3
    assert s.verify() == 3
    s.close()


@pytest.mark.hazard("HAZ-013")
def test_wal_and_full_sync_are_in_force(store: EventStore) -> None:
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def tamper(path: Path, sql: str) -> None:
    db = sqlite3.connect(path)
    db.execute(sql)
    db.commit()
    db.close()


@pytest.mark.hazard("HAZ-013")
def test_an_edited_payload_is_found_and_named(store: EventStore) -> None:
    store.append(new(5))
    tamper(store.path, "UPDATE events SET payload = '{\"n\": 99}' WHERE seq = 3")
    with pytest.raises(ChainBroken) as info:
        store.verify()
    assert info.value.seq == 3
    assert "edited" in str(info.value)


@pytest.mark.hazard("HAZ-013")
def test_a_deleted_event_is_found_and_named(store: EventStore) -> None:
    store.append(new(5))
    tamper(store.path, "DELETE FROM events WHERE seq = 2")
    with pytest.raises(ChainBroken) as info:
        store.verify()
    assert info.value.seq == 2
    assert "missing" in str(info.value)


@pytest.mark.hazard("HAZ-013")
def test_reordered_events_are_found(store: EventStore) -> None:
    store.append(new(3))
    # Swap the content of events 2 and 3 (keeping seq numbers): the chain no longer links.
    tamper(store.path, "UPDATE events SET seq = -2 WHERE seq = 2")
    tamper(store.path, "UPDATE events SET seq = 2 WHERE seq = 3")
    tamper(store.path, "UPDATE events SET seq = 3 WHERE seq = -2")
    with pytest.raises(ChainBroken) as info:
        store.verify()
    assert info.value.seq == 2


def test_a_deleted_tail_is_not_detectable_by_the_chain_alone(store: EventStore) -> None:
    # Documented limit: truncating the newest events leaves a valid chain. The outbox (events
    # delivered upstream carry their seq and hash) is what reveals it; see docs/events.md.
    store.append(new(3))
    tamper(store.path, "DELETE FROM events WHERE seq = 3")
    assert store.verify() == 2


def test_unknown_event_type_is_refused(store: EventStore) -> None:
    with pytest.raises(EventLogError, match="unknown event type"):
        store.append([NewEvent("made.up", {})])  # type: ignore[arg-type]
    assert store.count() == 0


def test_outbox_position_never_moves_backwards(store: EventStore) -> None:
    store.append(new(5))
    store.mark_delivered("mqtt", 4)
    store.mark_delivered("mqtt", 2)
    assert store.delivered_seq("mqtt") == 4
    assert [e.seq for e in store.read_after(4)] == [5]


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EventLogError, match="cannot open"):
        EventStore(blocker / "events.sqlite3", "gw", FakeClock())


@pytest.mark.hazard("HAZ-013")
async def test_async_append_returns_after_commit_and_groups_commits(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.sqlite3", "gw", FakeClock())
    signal = asyncio.Event()
    log.subscribe(signal)
    writer = asyncio.create_task(log.run())
    try:
        results = await asyncio.gather(
            *(log.append(EventType.CHANNEL_STATE, {"i": i}, pump="p", channel=1) for i in range(200))
        )
        assert sorted(e.seq for e in results) == list(range(1, 201))
        assert signal.is_set()
        # Committed means readable by another connection right now.
        db = sqlite3.connect(tmp_path / "e.sqlite3")
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 200
        db.close()
    finally:
        writer.cancel()
        await asyncio.wait({writer})
        await log.close()


@pytest.mark.hazard("HAZ-013")
async def test_events_queued_at_stop_are_still_committed(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.sqlite3", "gw", FakeClock())
    ready = asyncio.Event()
    writer = asyncio.create_task(log.run(ready))
    await ready.wait()
    pending = [asyncio.create_task(log.append(EventType.GATEWAY_STOPPED, {})) for _ in range(3)]
    await asyncio.sleep(0)  # let the appends reach the queue
    writer.cancel()
    await asyncio.wait({writer})
    assert [t.result().seq for t in pending] == [1, 2, 3]
    await log.close()


@pytest.mark.hazard("HAZ-013")
async def test_a_payload_that_is_not_json_is_refused_to_its_caller_only(tmp_path: Path) -> None:
    # Found in review: a Decimal in a payload killed the writer and lost the other events.
    from decimal import Decimal

    log = EventLog(tmp_path / "e.sqlite3", "gw", FakeClock())
    ready = asyncio.Event()
    writer = asyncio.create_task(log.run(ready))
    await ready.wait()
    try:
        good = asyncio.create_task(log.append(EventType.ALARM_RAISED, {"alarm": "occlusion"}))
        with pytest.raises(EventLogError, match="payload is not plain JSON"):
            await log.append(EventType.CHANNEL_STATE, {"rate": Decimal("5")})
        with pytest.raises(EventLogError, match="payload is not plain JSON"):
            await log.append(EventType.CHANNEL_STATE, {"rate": float("nan")})
        assert (await good).seq == 1
        assert not writer.done()
        assert (await log.append(EventType.GATEWAY_STOPPED, {})).seq == 2
    finally:
        writer.cancel()
        await asyncio.wait({writer})
        await log.close()


@pytest.mark.hazard("HAZ-013")
def test_a_damaged_payload_is_named_not_a_traceback(store: EventStore) -> None:
    store.append(new(3))
    tamper(store.path, "UPDATE events SET payload = '{oops' WHERE seq = 2")
    with pytest.raises(ChainBroken) as info:
        store.verify()
    assert info.value.seq == 2
    with pytest.raises(ChainBroken, match="not valid JSON"):
        store.read_after(0)


@pytest.mark.hazard("HAZ-013")
def test_verify_file_is_read_only_and_reports_the_end_of_the_chain(tmp_path: Path) -> None:
    from pumpgw.gateway.eventlog import verify_file

    path = tmp_path / "e.sqlite3"
    s = EventStore(path, "gw", FakeClock())
    last = s.append(new(4))[-1]
    s.close()
    before = path.read_bytes()
    result = verify_file(path)
    assert (result.count, result.last_seq, result.last_hash) == (4, 4, last.hash)
    assert path.read_bytes() == before
    other = tmp_path / "other.sqlite3"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.close()
    with pytest.raises(EventLogError, match="not a pumpgw event log"):
        verify_file(other)
