"""The local event log: SQLite in WAL mode, hash-chained, group-committed.

An event counts as accepted only once its transaction is committed with ``synchronous=FULL`` (WAL
with NORMAL survives a crash of the process but may lose the last commits on power loss, which a
bedside box must survive: shared/reference/dependencies.md §8). Commits are grouped: everything
queued while the previous commit was on disk goes into the next transaction, so throughput follows
the disk's commit rate times the batch size instead of one fsync per event.

Each event stores the SHA-256 of the previous event's hash and its own canonical content, so an
edited, deleted or reordered event is found by :meth:`EventStore.verify`. Deleting the newest
events leaves a valid but shorter chain: compare the last seq and hash (:func:`verify_file`) with
the copy delivered upstream to see that.

:class:`EventStore` is the synchronous core (one connection, used from one thread);
:class:`EventLog` is the asyncio face that runs the store on a dedicated thread and group-commits.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .clock import Clock
from .errors import ChainBroken, EventLogError
from .events import Event, EventType, NewEvent

GENESIS_HASH = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq       INTEGER PRIMARY KEY,
    id        TEXT NOT NULL UNIQUE,
    time      TEXT NOT NULL,
    gateway   TEXT NOT NULL,
    type      TEXT NOT NULL,
    pump      TEXT,
    channel   INTEGER,
    payload   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    destination   TEXT PRIMARY KEY,
    delivered_seq INTEGER NOT NULL
);
"""


def event_hash(prev_hash: str, content: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the canonical JSON of the event's content."""
    canonical = json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def _content(seq: int, id_: str, time: str, gateway: str, new: NewEvent) -> dict[str, Any]:
    return {
        "seq": seq,
        "id": id_,
        "time": time,
        "gateway": gateway,
        "type": str(new.type),
        "pump": new.pump,
        "channel": new.channel,
        "payload": new.payload,
    }


class _Uuid7:
    """UUIDv7 (RFC 9562 §5.7) ids, strictly increasing within this process even within 1 ms."""

    def __init__(self) -> None:
        self._last_ms = -1
        self._counter = 0

    def next(self, unix_ms: int) -> str:
        if unix_ms <= self._last_ms:
            unix_ms = self._last_ms  # wall clock stepped back: keep ids ordered
            self._counter += 1
        else:
            self._last_ms = unix_ms
            self._counter = int.from_bytes(os.urandom(2), "big") & 0x3FF  # leave room to count up
        if self._counter > 0xFFF:  # 4096 ids in one ms: borrow the next ms
            self._last_ms += 1
            unix_ms = self._last_ms
            self._counter = 0
        rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (unix_ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | self._counter << 64 | 0b10 << 62 | rand_b
        return str(uuid.UUID(int=value))


class EventStore:
    """The synchronous event store. Not thread-safe: use it from one thread (EventLog does)."""

    def __init__(self, path: Path, gateway: str, clock: Clock) -> None:
        self.path = path
        self.gateway = gateway
        self._clock = clock
        self._ids = _Uuid7()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise EventLogError(str(path), f"cannot open: {exc}") from exc
        self._last_seq: int = row[0] if row else 0
        self._last_hash: str = row[1] if row else GENESIS_HASH

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def close(self) -> None:
        self._db.close()

    def append(self, batch: Sequence[NewEvent]) -> list[Event]:
        """Commit ``batch`` in one transaction; return the events as stored. All or nothing."""
        seq, prev = self._last_seq, self._last_hash
        rows: list[Event] = []
        for new in batch:
            if not isinstance(new.type, EventType):
                raise EventLogError(str(self.path), f"unknown event type {new.type!r}")
            seq += 1
            now = self._clock.wall()
            time = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            id_ = self._ids.next(int(now.timestamp() * 1000))
            content = _content(seq, id_, time, self.gateway, new)
            try:
                digest = event_hash(prev, content)
            except (TypeError, ValueError) as exc:
                raise EventLogError(
                    str(self.path), f"{new.type} payload is not plain JSON (strings, numbers, lists): {exc}"
                ) from None
            rows.append(
                Event(seq, id_, time, self.gateway, str(new.type), new.pump, new.channel,
                      new.payload, prev, digest)
            )  # fmt: skip
            prev = digest
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        e.seq,
                        e.id,
                        e.time,
                        e.gateway,
                        e.type,
                        e.pump,
                        e.channel,
                        json.dumps(e.payload, sort_keys=True, ensure_ascii=False),
                        e.prev_hash,
                        e.hash,
                    )
                    for e in rows
                ],
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise EventLogError(str(self.path), f"cannot commit {len(batch)} event(s): {exc}") from exc
        self._last_seq, self._last_hash = seq, prev
        return rows

    def read_after(self, seq: int, limit: int = 100) -> list[Event]:
        """Up to ``limit`` events with a sequence number above ``seq``, in order."""
        try:
            cur = self._db.execute(
                "SELECT seq, id, time, gateway, type, pump, channel, payload, prev_hash, hash "
                "FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            return [_row_to_event(r) for r in cur]
        except _BadRow as bad:
            raise ChainBroken(str(self.path), bad.seq, bad.reason) from None
        except sqlite3.Error as exc:
            raise EventLogError(str(self.path), f"cannot read events after seq {seq}: {exc}") from exc

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM events").fetchone()[0])

    def delivered_seq(self, destination: str) -> int:
        row = self._db.execute(
            "SELECT delivered_seq FROM outbox WHERE destination = ?", (destination,)
        ).fetchone()
        return int(row[0]) if row else 0

    def mark_delivered(self, destination: str, seq: int) -> None:
        """Record that ``destination`` has every event up to ``seq`` (never moves backwards)."""
        self._db.execute(
            "INSERT INTO outbox VALUES (?, ?) ON CONFLICT(destination) DO UPDATE "
            "SET delivered_seq = max(delivered_seq, excluded.delivered_seq)",
            (destination, seq),
        )

    def verify(self) -> int:
        """Check the whole hash chain; return the number of events. Raises ChainBroken."""
        return verify_events(str(self.path), _iter_all(self._db, str(self.path)))


class _BadRow(Exception):
    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason


def _row_to_event(row: tuple[Any, ...]) -> Event:
    try:
        payload = json.loads(row[7])
    except (TypeError, ValueError):
        raise _BadRow(row[0], "payload is not valid JSON (edited)") from None
    return Event(row[0], row[1], row[2], row[3], row[4], row[5], row[6], payload, row[8], row[9])


def _iter_all(db: sqlite3.Connection, source: str) -> Iterator[Event]:
    cur = db.execute(
        "SELECT seq, id, time, gateway, type, pump, channel, payload, prev_hash, hash "
        "FROM events ORDER BY seq"
    )
    for row in cur:
        try:
            yield _row_to_event(row)
        except _BadRow as bad:
            raise ChainBroken(source, bad.seq, bad.reason) from None


@dataclass(frozen=True)
class Verified:
    count: int
    last_seq: int
    last_hash: str  # compare with the copy delivered upstream: truncation leaves a valid chain


def verify_file(path: Path) -> Verified:
    """Verify the log at ``path`` without writing to it (read-only; no table is created).

    Raises EventLogError if it is not an event log, ChainBroken at the first bad event.
    """
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise EventLogError(str(path), f"cannot open read-only: {exc}") from exc
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "events" not in tables:
            raise EventLogError(str(path), "not a pumpgw event log (no events table)")
        count = verify_events(str(path), _iter_all(db, str(path)))
        row = db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    except sqlite3.Error as exc:
        raise EventLogError(str(path), f"cannot read: {exc}") from exc
    finally:
        db.close()
    return Verified(count, row[0] if row else 0, row[1] if row else GENESIS_HASH)


def verify_events(source: str, events: Iterator[Event]) -> int:
    """Verify a sequence of events as a hash chain starting at genesis. Raises ChainBroken."""
    prev, expected_seq, n = GENESIS_HASH, 1, 0
    for e in events:
        if e.seq != expected_seq:
            raise ChainBroken(source, expected_seq, f"missing; next stored event is seq {e.seq}")
        if e.prev_hash != prev:
            raise ChainBroken(source, e.seq, "prev_hash does not match the previous event's hash")
        content = {
            "seq": e.seq, "id": e.id, "time": e.time, "gateway": e.gateway, "type": e.type,
            "pump": e.pump, "channel": e.channel, "payload": e.payload,
        }  # fmt: skip
        if event_hash(prev, content) != e.hash:
            raise ChainBroken(source, e.seq, "content does not match its hash (edited)")
        prev, expected_seq, n = e.hash, expected_seq + 1, n + 1
    return n


class EventLog:
    """Asyncio face of the store: ``await append(...)`` returns once the event is on disk.

    All database work runs on one dedicated thread, so a slow fsync (an SD card) never blocks
    the event loop that talks to the pumps. ``run()`` is the group-commit writer; it must be
    running for ``append`` to complete.
    """

    def __init__(self, path: Path, gateway: str, clock: Clock, max_batch: int = 500) -> None:
        self.path = path
        self._gateway = gateway
        self._clock = clock
        self._max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventlog")
        self._store: EventStore | None = None
        self._queue: asyncio.Queue[tuple[NewEvent, asyncio.Future[Event]]] = asyncio.Queue()
        self._subscribers: list[asyncio.Event] = []

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        self._store = await self._call(EventStore, self.path, self._gateway, self._clock)

    async def close(self) -> None:
        if self._store is not None:
            await self._call(self._store.close)
            self._store = None
        self._executor.shutdown(wait=True)

    @property
    def store(self) -> EventStore:
        if self._store is None:
            raise EventLogError(str(self.path), "not open")
        return self._store

    async def append(
        self,
        type: EventType,
        payload: dict[str, Any] | None = None,
        *,
        pump: str | None = None,
        channel: int | None = None,
    ) -> Event:
        """Queue an event and wait until it is committed. Raises EventLogError if it cannot be."""
        payload = payload or {}
        try:
            json.dumps(payload, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            # Refused here, to this caller only: a bad payload must not fail a batch of others.
            raise EventLogError(str(self.path), f"{type} payload is not plain JSON: {exc}") from None
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        await self._queue.put((NewEvent(type, payload, pump, channel), fut))
        return await fut

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """The group-commit writer: runs until cancelled, then commits what is already queued."""
        if self._store is None:
            await self.open()
        if ready is not None:
            ready.set()
        in_flight: asyncio.Future[None] | None = None
        try:
            while True:
                first = await self._queue.get()
                # Shielded: a stop that arrives during a commit lets the commit finish and answer
                # its callers; an event is either committed and acknowledged or refused, never lost.
                in_flight = asyncio.ensure_future(self._commit([first]))
                await asyncio.shield(in_flight)
        finally:
            if in_flight is not None and not in_flight.done():
                await asyncio.wait({in_flight})
            leftover = []
            while not self._queue.empty():
                leftover.append(self._queue.get_nowait())
            if leftover:
                await self._commit(leftover)

    async def _commit(self, batch: list[tuple[NewEvent, asyncio.Future[Event]]]) -> None:
        while len(batch) < self._max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        try:
            stored: list[Event] = await self._call(self.store.append, [n for n, _ in batch])
        except Exception as exc:  # noqa: BLE001 - every caller gets an answer; the writer lives on
            error = exc if isinstance(exc, EventLogError) else EventLogError(str(self.path), repr(exc))
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(error)
            return
        for (_, fut), event in zip(batch, stored, strict=True):
            if not fut.done():
                fut.set_result(event)
        for signal in self._subscribers:
            signal.set()

    def subscribe(self, signal: asyncio.Event) -> None:
        """Set ``signal`` after every commit (the outboxes wait on it instead of polling)."""
        self._subscribers.append(signal)

    @property
    def last_seq(self) -> int:
        return self.store.last_seq

    @property
    def is_open(self) -> bool:
        return self._store is not None

    async def read_after(self, seq: int, limit: int = 100) -> list[Event]:
        result: list[Event] = await self._call(self.store.read_after, seq, limit)
        return result

    async def delivered_seq(self, destination: str) -> int:
        result: int = await self._call(self.store.delivered_seq, destination)
        return result

    async def mark_delivered(self, destination: str, seq: int) -> None:
        await self._call(self.store.mark_delivered, destination, seq)
