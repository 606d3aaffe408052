"""The local event log: SQLite in WAL mode, hash-chained, group-committed, with retention.

An event counts as accepted only once its transaction is committed with ``synchronous=FULL`` (WAL
with NORMAL survives a crash of the process but may lose the last commits on power loss, which a
bedside box must survive: shared/reference/dependencies.md §8). Commits are grouped: everything
queued while the previous commit was on disk goes into the next transaction, so throughput follows
the disk's commit rate times the batch size instead of one fsync per event.

Each event stores the SHA-256 of the previous event's hash and its own canonical content, so an
edited, deleted or reordered event is found by :func:`verify_file`. Deleting the newest events
leaves a valid but shorter chain: compare the last seq and hash with the copy delivered upstream.

Retention (``max_events``): when the log holds more events than the cap, the oldest events that
every configured destination has already received are deleted, in one transaction with an
``eventlog.pruned`` event that names the last deleted event; the chain then starts from that
anchor, and ``verify`` checks the anchor against the newest ``eventlog.pruned`` event. Events not
yet delivered are never deleted, whatever the cap: the log then grows past it, and
``eventlog.near_capacity`` is written when the undelivered events reach ``warn_percent`` of it.

One process writes a log at a time: the store holds an exclusive lock (``events.sqlite3.lock``), so a
second gateway on the same state directory is refused instead of forking the chain. Readers
(``pumpgw events verify|export|tail``) open the database read-only and need no lock.

:class:`EventStore` is the synchronous core (one connection, used from one thread);
:class:`EventLog` is the asyncio face that runs the store on a dedicated thread and group-commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from .clock import Clock
from .errors import ChainBroken, EventLogError
from .events import PAYLOADS, Event, EventType, NewEvent, Refs, payload_problem

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
#: ``PRAGMA user_version`` of a log in this format (event schema 1.x).
FORMAT_VERSION = 1
#: A wall clock that moved this much more (or less) than monotonic time between two commits was
#: stepped (NTP on a Pi without a real-time clock): ``gateway.clock_adjusted`` records it.
CLOCK_STEP_S = 2.0
#: At most this many events are deleted per retention pass (one short transaction).
PRUNE_CHUNK = 10_000

_COLUMNS = (
    "seq, id, time, gateway, type, pump, channel, patient, order_ref, clinician, payload, prev_hash, hash"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq       INTEGER PRIMARY KEY,
    id        TEXT NOT NULL UNIQUE,
    time      TEXT NOT NULL,
    gateway   TEXT NOT NULL,
    type      TEXT NOT NULL,
    pump      TEXT,
    channel   INTEGER,
    patient   TEXT,
    order_ref TEXT,
    clinician TEXT,
    payload   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    destination   TEXT PRIMARY KEY,
    delivered_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chain_anchor (
    one  INTEGER PRIMARY KEY CHECK (one = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
"""


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 as is, no NaN: the form the hash is computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def event_hash(prev_hash: str, content: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the canonical JSON of the event's content."""
    return hashlib.sha256(f"{prev_hash}\n{canonical_json(content)}".encode()).hexdigest()


_scalar_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
#: The keys of Event.content(), sorted as canonical JSON sorts them.
_CONTENT_KEYS = ("channel", "clinician", "gateway", "id", "order", "patient", "payload", "pump", "seq",
                 "time", "type")  # fmt: skip


def _content_json(e: Event, payload_json: str) -> str:
    """``canonical_json(e.content())``, built around the payload's JSON already made (the writer
    stores that same text): one encoding of the payload per event instead of two. verify() checks
    with :func:`event_hash`, so the two can never disagree unnoticed."""
    parts = [
        f'"{key}":{payload_json if key == "payload" else _scalar_json(getattr(e, key))}'
        for key in _CONTENT_KEYS
    ]
    return "{" + ",".join(parts) + "}"


def iso_ms(when: datetime) -> str:
    """``2026-11-22T03:19:16.123Z``: the time format of the log (UTC). Raises ValueError for a
    naive datetime: a time without a zone is never guessed."""
    if when.tzinfo is None:
        raise ValueError(f"{when.isoformat()} has no time zone")
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Uuid7:
    """UUIDv7 (RFC 9562 §5.7) ids, strictly increasing even within 1 ms, and across a restart once
    :meth:`continue_after` was given the newest id already stored."""

    def __init__(self) -> None:
        self._last_ms = -1
        self._counter = 0

    def continue_after(self, last_id: str) -> None:
        """Hand out only ids above ``last_id`` (the newest in the log), even if the wall clock is
        now behind it (a reboot without a real-time clock) or in the same millisecond."""
        try:
            value = uuid.UUID(last_id).int
        except ValueError:
            return  # not ours (edited): verify reports it; ids then follow the clock alone
        self._last_ms = value >> 80
        self._counter = (value >> 64) & 0xFFF

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


@dataclass(frozen=True)
class Retention:
    """The retention rule: at most ``max_events`` (None: keep everything), warn at ``warn_percent``
    of it, and never delete what one of ``destinations`` has not received yet."""

    max_events: int | None = None
    warn_percent: int = 80
    destinations: tuple[str, ...] = ()


def _open_error(path: Path, exc: BaseException) -> EventLogError:
    """Say why the database cannot be opened, in terms of what to do about it."""
    text = str(exc)
    directory = path.parent
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        return EventLogError(
            str(path),
            "is not an SQLite database (damaged, or another file): it was left untouched; move it "
            "aside (keep it for investigation) and start the gateway again to begin a new log",
        )
    # os.path.isdir/exists, not Path.exists: they answer False for a directory this user cannot
    # even search instead of raising PermissionError from inside this error report.
    if os.path.isdir(directory) and not os.access(directory, os.W_OK):
        return EventLogError(
            str(path),
            f"the directory {directory} is not writable by this user (uid {os.geteuid()}); SQLite also "
            f"needs to create {path.name}-wal and {path.name}-shm beside the log ({text})",
        )
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return EventLogError(str(path), f"the log file is read-only for this user (uid {os.geteuid()})")
    return EventLogError(str(path), f"cannot open: {text}")


def _write_error(path: Path, exc: sqlite3.Error, what: str) -> EventLogError:
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return EventLogError(str(path), f"the disk is full: {what} refused until space is freed ({exc})")
    return EventLogError(str(path), f"{what} failed: {exc}")


class _Lock:
    """An exclusive ``flock`` on ``<log>.lock``: one writer per log. Released by the kernel on exit."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self, log_path: Path) -> None:
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the life of the store
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise EventLogError(
                str(log_path), f"is in use by another process (pid {holder}): one gateway per state directory"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class EventStore:
    """The synchronous event store. Not thread-safe: use it from one thread (EventLog does)."""

    def __init__(self, path: Path, gateway: str, clock: Clock, retention: Retention = Retention()) -> None:
        self.path = path
        self.gateway = gateway
        self.retention = retention
        self._clock = clock
        self._ids = _Uuid7()
        self._lock = _Lock(path)
        self._warned = False
        self._clock_mark: tuple[datetime, float] | None = None
        self._payload_json: dict[int, str] = {}  # seq -> the payload's canonical JSON, until committed
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(path)
        except OSError as exc:
            raise _open_error(path, exc) from exc
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            self._lock.release()
            raise _open_error(path, exc) from exc
        try:
            self._prepare()
        except (OSError, sqlite3.Error) as exc:
            self._db.close()
            self._lock.release()
            raise _open_error(path, exc) from exc
        except EventLogError:
            self._db.close()
            self._lock.release()
            raise

    def _prepare(self) -> None:
        db = self._db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if "events" in tables and version != FORMAT_VERSION:
            raise EventLogError(
                str(self.path),
                f"was written in event-log format {version}, this gateway writes format {FORMAT_VERSION}: "
                "it was left untouched; move it aside (an earlier pumpgw can still verify and export it)",
            )
        if tables and "events" not in tables:
            raise EventLogError(
                str(self.path),
                f"is an SQLite database but not a pumpgw event log (tables: {', '.join(sorted(tables))}): "
                "it was left untouched; is the state directory right?",
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        # One transaction: a crash cannot leave the tables without the format version, which the
        # next start would take for a log of format 0.
        db.executescript(f"BEGIN;\n{_SCHEMA}PRAGMA user_version = {FORMAT_VERSION};\nCOMMIT;")
        row = db.execute("SELECT seq, hash, id FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None:
            self._ids.continue_after(str(row[2]))
        anchor = db.execute("SELECT seq, hash FROM chain_anchor").fetchone()
        self._anchor: tuple[int, str] = (anchor[0], anchor[1]) if anchor else (0, GENESIS_HASH)
        self._last_seq: int = row[0] if row else self._anchor[0]
        self._last_hash: str = row[1] if row else self._anchor[1]

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """The oldest event still stored (after retention); ``last_seq + 1`` when there is none."""
        return self._anchor[0] + 1

    def close(self) -> None:
        self._db.close()
        self._lock.release()

    def append(self, batch: Sequence[NewEvent], *, check: bool = True) -> list[Event]:
        """Commit ``batch`` in one transaction; return the events as stored. All or nothing.

        ``check``: validate every payload against its type's model first (EventLog has already).
        A ``gateway.clock_adjusted`` event is written first when the wall clock was stepped since
        the previous commit; it is not among the events returned.
        """
        for new in batch:
            if not isinstance(new.type, EventType) or new.type not in PAYLOADS:
                raise EventLogError(str(self.path), f"unknown event type {new.type!r}")
            if check and (problem := payload_problem(new.type, new.payload)) is not None:
                raise EventLogError(str(self.path), f"{new.type} payload does not fit the schema: {problem}")
        now, mono = self._clock.wall(), self._clock.monotonic()
        extra = self._clock_step(now, mono)
        rows = self._rows([*extra, *batch], now)
        self._commit(rows, what=f"writing {len(batch)} event(s)")
        self._clock_mark = (now, mono)
        return rows[len(extra) :]

    def _clock_step(self, now: datetime, mono: float) -> list[NewEvent]:
        if self._clock_mark is None:
            return []
        wall_before, mono_before = self._clock_mark
        step = (now - wall_before).total_seconds() - (mono - mono_before)
        if abs(step) < CLOCK_STEP_S:
            return []
        expected = wall_before + timedelta(seconds=mono - mono_before)
        payload = {"step_s": f"{step:.3f}", "wall_before": iso_ms(expected), "wall_after": iso_ms(now)}
        return [NewEvent(EventType.CLOCK_ADJUSTED, payload)]

    def _rows(self, batch: Sequence[NewEvent], now: datetime) -> list[Event]:
        seq, prev = self._last_seq, self._last_hash
        time = iso_ms(now)
        unix_ms = int(now.timestamp() * 1000)
        rows: list[Event] = []
        for new in batch:
            seq += 1
            refs = new.refs
            e = Event(seq, self._ids.next(unix_ms), time, self.gateway, str(new.type), new.pump,
                      new.channel, refs.patient, refs.order, refs.clinician, new.payload, "", "")  # fmt: skip
            try:
                payload_json = canonical_json(new.payload)
                content = f"{prev}\n{_content_json(e, payload_json)}".encode()
            except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
                raise EventLogError(
                    str(self.path), f"{new.type} payload is not plain JSON (strings, numbers, lists): {exc}"
                ) from None
            digest = hashlib.sha256(content).hexdigest()
            rows.append(_with_hashes(e, prev, digest))
            self._payload_json[seq] = payload_json
            prev = digest
        return rows

    def _commit(
        self, rows: Sequence[Event], *, what: str, before: Sequence[tuple[str, tuple[Any, ...]]] = ()
    ) -> None:
        """Insert ``rows`` (after running ``before``) in one transaction; then advance the chain."""
        made, self._payload_json = self._payload_json, {}
        values = [
            (e.seq, e.id, e.time, e.gateway, e.type, e.pump, e.channel, e.patient, e.order,
             e.clinician, made.get(e.seq) or canonical_json(e.payload), e.prev_hash, e.hash)
            for e in rows
        ]  # fmt: skip
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for sql, params in before:
                self._db.execute(sql, params)
            self._db.executemany(
                f"INSERT INTO events ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
                values,
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise _write_error(self.path, exc, what) from exc
        if rows:
            self._last_seq, self._last_hash = rows[-1].seq, rows[-1].hash

    # -- retention -------------------------------------------------------------------------------
    def min_delivered(self) -> int:
        """The newest event every configured destination has received (``last_seq`` if none)."""
        if not self.retention.destinations:
            return self._last_seq
        return min(self.delivered_seq(d) for d in self.retention.destinations)

    def undelivered(self) -> int:
        return max(0, self._last_seq - max(self.min_delivered(), self._anchor[0]))

    def time_of(self, seq: int) -> str | None:
        try:
            row = self._db.execute("SELECT time FROM events WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.Error as exc:
            raise EventLogError(str(self.path), f"cannot read event {seq}: {exc}") from exc
        return None if row is None else str(row[0])

    def maintain(self) -> list[Event]:
        """Apply the retention rule once: warn near the cap, delete what may go. Returns new events."""
        rule = self.retention
        if rule.max_events is None:
            return []
        written: list[Event] = []
        undelivered = self.undelivered()
        percent = undelivered * 100 // rule.max_events
        if percent >= rule.warn_percent and not self._warned:
            oldest = self.time_of(self._last_seq - undelivered + 1) if undelivered else None
            payload = {
                "undelivered": undelivered,
                "max_events": rule.max_events,
                "percent": percent,
                "oldest_undelivered_time": oldest,
                "destinations": list(rule.destinations),
            }
            written += self.append([NewEvent(EventType.LOG_NEAR_CAPACITY, payload)])
            self._warned = True  # only once written: a warning refused by a full disk is retried
        elif percent < rule.warn_percent - 5:
            self._warned = False  # hysteresis: a backlog hovering at the line does not flood the log
        stored = self._last_seq - self._anchor[0]
        if stored > rule.max_events:
            through = min(
                self._last_seq - rule.max_events * 9 // 10,  # prune to 90 %: not one event per commit
                self.min_delivered(),  # never what a destination still needs
                self._anchor[0] + PRUNE_CHUNK,
            )
            if through > self._anchor[0]:
                written += self._prune(through)
        return written

    def _prune(self, through: int) -> list[Event]:
        row = self._db.execute("SELECT hash FROM events WHERE seq = ?", (through,)).fetchone()
        if row is None:
            raise EventLogError(
                str(self.path), f"retention: event {through} is missing; run pumpgw events verify"
            )
        count = through - self._anchor[0]
        payload = {"count": count, "through_seq": through, "through_hash": row[0]}
        now, mono = self._clock.wall(), self._clock.monotonic()
        extra = self._clock_step(now, mono)  # a step since the last commit is recorded, not absorbed
        rows = self._rows([*extra, NewEvent(EventType.LOG_PRUNED, payload)], now)
        self._commit(
            rows,
            what=f"deleting {count} delivered event(s)",
            before=[
                ("DELETE FROM events WHERE seq <= ?", (through,)),
                ("INSERT OR REPLACE INTO chain_anchor VALUES (1, ?, ?)", (through, row[0])),
            ],
        )
        self._anchor = (through, row[0])
        self._clock_mark = (now, mono)
        return rows

    # -- reading ---------------------------------------------------------------------------------
    def read_after(self, seq: int, limit: int = 100) -> list[Event]:
        """Up to ``limit`` events with a sequence number above ``seq``, in order."""
        try:
            cur = self._db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
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
        try:
            row = self._db.execute(
                "SELECT delivered_seq FROM outbox WHERE destination = ?", (destination,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise EventLogError(str(self.path), f"cannot read the delivery of {destination}: {exc}") from exc
        return int(row[0]) if row else 0

    def mark_delivered(self, destination: str, seq: int) -> None:
        """Record that ``destination`` has every event up to ``seq`` (never moves backwards)."""
        try:
            self._db.execute(
                "INSERT INTO outbox VALUES (?, ?) ON CONFLICT(destination) DO UPDATE "
                "SET delivered_seq = max(delivered_seq, excluded.delivered_seq)",
                (destination, seq),
            )
        except sqlite3.Error as exc:
            raise _write_error(self.path, exc, f"recording delivery to {destination}") from exc

    def verify(self) -> int:
        """Check the whole hash chain; return the number of events.

        Raises ChainBroken at the first bad event, EventLogError if the file cannot be read.
        """
        try:
            return _verify_db(self._db, str(self.path)).count
        except sqlite3.Error as exc:  # a damaged page: as verify_file says it, not a traceback
            raise EventLogError(str(self.path), f"cannot read: {exc}") from exc


def _with_hashes(e: Event, prev: str, digest: str) -> Event:
    return Event(e.seq, e.id, e.time, e.gateway, e.type, e.pump, e.channel, e.patient, e.order,
                 e.clinician, e.payload, prev, digest)  # fmt: skip


class _BadRow(Exception):
    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason


def _row_to_event(row: tuple[Any, ...]) -> Event:
    try:
        payload = json.loads(row[10])
    except (TypeError, ValueError):
        raise _BadRow(row[0], "payload is not valid JSON (edited)") from None
    if not isinstance(payload, dict):
        raise _BadRow(row[0], "payload is not a JSON object (edited)")
    return Event(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
                 payload, row[11], row[12])  # fmt: skip


def iter_events(
    db: sqlite3.Connection, source: str, where: str = "", params: Sequence[Any] = ()
) -> Iterator[Event]:
    """Every stored event (matching the SQL ``where`` clause, if given), in order of ``seq``.

    Raises ChainBroken naming the first row that cannot be read back as an event.
    """
    # ``where`` is built by our own code from constant clauses; every value is a bound parameter.
    try:
        cur = db.execute(f"SELECT {_COLUMNS} FROM events {where} ORDER BY seq", tuple(params))  # noqa: S608
        for row in cur:
            try:
                yield _row_to_event(row)
            except _BadRow as bad:
                raise ChainBroken(source, bad.seq, bad.reason) from None
    except sqlite3.Error as exc:
        raise EventLogError(source, f"cannot read events: {exc}") from exc


@dataclass(frozen=True)
class Verified:
    count: int
    first_seq: int
    last_seq: int
    last_hash: str  # compare with the copy delivered upstream: truncation leaves a valid chain
    pruned_through: int = 0  # events up to this seq were deleted by the retention rule
    destinations: dict[str, int] = field(default_factory=dict)  # delivered_seq per destination


def open_read_only(path: Path) -> sqlite3.Connection:
    """Open the log at ``path`` read-only (nothing is created or changed). Raises EventLogError."""
    try:
        exists = path.is_file()
    except OSError as exc:
        raise _open_error(path, exc) from exc
    if not exists:
        raise EventLogError(str(path), "no such event log (is the state directory right?)")
    db: sqlite3.Connection | None = None
    try:
        # A file: URI built by pathlib, so "#" or "?" in a directory name cannot drop mode=ro.
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        raise _open_error(path, exc) from exc
    if "events" not in tables:
        db.close()
        raise EventLogError(str(path), "not a pumpgw event log (no events table)")
    if version != FORMAT_VERSION:
        db.close()
        raise EventLogError(
            str(path), f"event-log format {version}; this pumpgw reads format {FORMAT_VERSION}"
        )
    return db


def verify_file(path: Path) -> Verified:
    """Verify the log at ``path`` without writing to it (read-only; no table is created).

    Raises EventLogError if it is not an event log, ChainBroken at the first bad event.
    """
    db = open_read_only(path)
    try:
        return _verify_db(db, str(path))
    except sqlite3.Error as exc:
        raise EventLogError(str(path), f"cannot read: {exc}") from exc
    finally:
        db.close()


def _verify_db(db: sqlite3.Connection, source: str) -> Verified:
    anchor = db.execute("SELECT seq, hash FROM chain_anchor").fetchone()
    start = (int(anchor[0]), str(anchor[1])) if anchor else (0, GENESIS_HASH)
    count, last_seq, last_hash = verify_events(source, iter_events(db, source), start=start)
    if anchor:
        newest = db.execute(
            "SELECT payload, seq FROM events WHERE type = ? ORDER BY seq DESC LIMIT 1",
            (str(EventType.LOG_PRUNED),),
        ).fetchone()
        said = json.loads(newest[0]) if newest else {}
        if said.get("through_seq") != start[0] or said.get("through_hash") != start[1]:
            raise ChainBroken(
                source,
                start[0] + 1,
                f"the log starts after event {start[0]}, but no eventlog.pruned event records deleting "
                "up to there: old events were deleted outside the retention rule",
            )
    destinations = {str(r[0]): int(r[1]) for r in db.execute("SELECT destination, delivered_seq FROM outbox")}
    return Verified(count, start[0] + 1, last_seq, last_hash, start[0], destinations)


def verify_events(
    source: str, events: Iterator[Event], *, start: tuple[int, str] = (0, GENESIS_HASH)
) -> tuple[int, int, str]:
    """Verify events as a hash chain following ``start`` (seq, hash): genesis unless pruned.

    Returns (count, last seq, last hash). Raises ChainBroken naming the first bad event.
    """
    expected_seq, prev = start[0] + 1, start[1]
    n = 0
    for e in events:
        if e.seq != expected_seq:
            raise ChainBroken(source, expected_seq, f"missing; next stored event is seq {e.seq}")
        if e.prev_hash != prev:
            raise ChainBroken(source, e.seq, "prev_hash does not match the previous event's hash")
        if event_hash(prev, e.content()) != e.hash:
            raise ChainBroken(source, e.seq, "content does not match its hash (edited)")
        prev, expected_seq, n = e.hash, expected_seq + 1, n + 1
    return n, expected_seq - 1, prev


def _envelope_problem(pump: object, channel: object, refs: Refs) -> str | None:
    """Why the where/who of an event cannot be stored (checked before queueing, so one bad
    event never fails the group commit of others), or None."""
    if channel is not None and (not isinstance(channel, int) or isinstance(channel, bool)):
        return f"channel {channel!r} is not a whole number"
    named = {"pump": pump, "patient": refs.patient, "order": refs.order, "clinician": refs.clinician}
    for key, value in named.items():
        if value is None:
            continue
        if not isinstance(value, str):
            return f"{key} {value!r} is not text"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{key} {value!r} is not valid Unicode text"
    return None


@dataclass(frozen=True)
class LogHealth:
    """Whether the log accepts events now; when not, why, since when and how many were refused."""

    ok: bool
    reason: str | None = None
    since: str | None = None
    refused: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "since": self.since, "refused": self.refused}


@dataclass
class _Failure:
    first: str
    last: str
    error: str
    refused: int


#: Retention is applied after this many new events (and on the first commit).
MAINTAIN_EVERY = 256


class EventLog:
    """Asyncio face of the store: ``await append(...)`` returns once the event is on disk.

    All database work runs on one dedicated thread, so a slow fsync (an SD card) never blocks
    the event loop that talks to the pumps. ``run()`` is the group-commit writer; it must be
    running for ``append`` to complete.

    A commit that fails (a full disk, an I/O error) refuses its events to their callers with
    EventLogError and turns :attr:`health` not ok, with the reason; every later commit tries again,
    and the first that succeeds writes ``eventlog.write_recovered`` with how many were refused.
    The gateway reads :attr:`health` to refuse new auto-programming while the log cannot record it.
    """

    def __init__(
        self,
        path: Path,
        gateway: str,
        clock: Clock,
        max_batch: int = 500,
        *,
        retention: Retention = Retention(),
    ) -> None:
        self.path = path
        self._gateway = gateway
        self._clock = clock
        self._max_batch = max_batch
        self._retention = retention
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventlog")
        self._store: EventStore | None = None
        self._queue: asyncio.Queue[tuple[NewEvent, asyncio.Future[Event]]] = asyncio.Queue()
        self._subscribers: list[asyncio.Event] = []
        self._failure: _Failure | None = None
        self._maintained_at = -MAINTAIN_EVERY

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def open(self) -> None:
        self._store = await self._call(EventStore, self.path, self._gateway, self._clock, self._retention)

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

    @property
    def retention(self) -> Retention:
        return self._retention

    @property
    def health(self) -> LogHealth:
        f = self._failure
        if f is None:
            return LogHealth(True)
        return LogHealth(False, f.error, f.first, f.refused)

    async def append(
        self,
        type: EventType,
        payload: dict[str, Any] | None = None,
        *,
        pump: str | None = None,
        channel: int | None = None,
        refs: Refs | None = None,
    ) -> Event:
        """Queue an event and wait until it is committed. Raises EventLogError if it cannot be.

        A payload that does not fit its type's schema is refused here, to this caller only: a
        bad payload must not fail a batch of others.
        """
        payload = {} if payload is None else payload
        if not isinstance(type, EventType):
            raise EventLogError(str(self.path), f"unknown event type {type!r}")
        try:
            canonical_json(payload).encode()  # plain JSON, and text that UTF-8 can carry
        except (TypeError, ValueError) as exc:
            raise EventLogError(str(self.path), f"{type} payload is not plain JSON: {exc}") from None
        if (problem := payload_problem(type, payload)) is not None:
            raise EventLogError(str(self.path), f"{type} payload does not fit the schema: {problem}")
        refs = refs or Refs()
        if (problem := _envelope_problem(pump, channel, refs)) is not None:
            raise EventLogError(str(self.path), f"{type} event refused: {problem}")
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        await self._queue.put((NewEvent(type, payload, pump, channel, refs), fut))
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
            stored: list[Event] = await self._call(self._write, [n for n, _ in batch])
        except Exception as exc:  # noqa: BLE001 - every caller gets an answer; the writer lives on
            error = exc if isinstance(exc, EventLogError) else EventLogError(str(self.path), repr(exc))
            self._failed(error, len(batch))
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(error)
            return
        for (_, fut), event in zip(batch, stored, strict=True):
            if not fut.done():
                fut.set_result(event)
        for signal in self._subscribers:
            signal.set()

    def _failed(self, error: EventLogError, refused: int) -> None:
        now = iso_ms(self._clock.wall())
        if self._failure is None:
            self._failure = _Failure(now, now, error.detail, refused)
        else:
            self._failure.last, self._failure.error = now, error.detail
            self._failure.refused += refused

    def _write(self, batch: list[NewEvent]) -> list[Event]:
        """On the log's thread: commit, then record a recovery and apply retention when due."""
        store = self.store
        stored = store.append(batch, check=False)
        failure = self._failure
        if failure is not None:
            self._failure = None
            payload = {"refused": failure.refused, "first_failure": failure.first,
                       "last_failure": failure.last, "error": failure.error}  # fmt: skip
            try:
                store.append([NewEvent(EventType.LOG_WRITE_RECOVERED, payload)])
            except EventLogError:
                self._failure = failure  # still failing: say so again next time
        if store.last_seq - self._maintained_at >= MAINTAIN_EVERY or (
            self._retention.max_events is not None
            and store.last_seq - store.first_seq + 1 > self._retention.max_events
        ):
            self._maintained_at = store.last_seq
            try:
                store.maintain()
            except Exception:
                # The batch above is committed whatever happens here, and its callers are told so.
                # Retention is tried again at the next pass; a full disk shows at the next commit.
                log.exception("the retention pass of the event log failed; it is tried again later")
        return stored

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

    async def time_of(self, seq: int) -> str | None:
        result: str | None = await self._call(self.store.time_of, seq)
        return result

    async def stats(self) -> dict[str, Any]:
        """For the status: how many events are stored, the cap, and what cannot be deleted yet."""

        def collect() -> dict[str, Any]:
            store = self.store
            stored = store.last_seq - store.first_seq + 1
            undelivered = store.undelivered()
            cap = self._retention.max_events
            return {
                "stored": stored,
                "first_seq": store.first_seq,
                "last_seq": store.last_seq,
                "max_events": cap,
                "undelivered": undelivered,
                "percent_of_cap": None if cap is None else undelivered * 100 // cap,
                "near_capacity": cap is not None and undelivered * 100 // cap >= self._retention.warn_percent,
            }

        result: dict[str, Any] = await self._call(collect)
        result["health"] = self.health.as_json()
        return result
