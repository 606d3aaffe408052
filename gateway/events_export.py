"""Reading the event log out: filters, the JSONL, CSV and FHIR writers, and the ``tail`` reader.

Everything here works on a read-only connection (:func:`pumpgw.gateway.eventlog.open_read_only`),
so it runs beside a gateway that is writing the log: WAL lets readers and the writer work at once,
and one ``SELECT`` reads one consistent snapshot however many events are committed meanwhile.

Filters become one SQL ``WHERE`` clause built from constant fragments; every value a user typed is
a bound parameter. Times compare as text: the log writes them in one fixed form
(``2026-11-22T03:19:16.123Z``, UTC, milliseconds), and a bound converted to that same form sorts
the same way as the instant it names. ``--since`` is inclusive and ``--until`` exclusive, so
consecutive windows (a day, the next day) neither overlap nor leave a gap.

User input is parsed strictly: a time without a zone is refused rather than guessed (the log is in
UTC, the bedside is not), and an event type this version does not know is refused with the list of
those it does. Problems are raised as ConfigError (key: the option, value: what was typed).

docs/events.md ("Export and tail") describes the commands, the formats and the CSV quoting rule.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from .errors import ConfigError, EnvironmentProblem, EventLogError
from .eventlog import canonical_json, iso_ms, iter_events
from .events import Event, EventType

#: ConfigError's ``source`` for a bad filter (the key names the option).
FILTER_SOURCE = "events filter"

#: Every type this version knows, and the families (``infusion``, ``channel``, ...) they belong to.
KNOWN_TYPES: tuple[str, ...] = tuple(t.value for t in EventType)
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(t.split(".", 1)[0] for t in KNOWN_TYPES))

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME_FORMS = (
    "an ISO 8601 time with its zone (2026-11-22T03:00:00Z, 2026-11-22T04:00:00+01:00) "
    "or a date (2026-11-22, meaning 00:00 UTC)"
)


def type_problem(value: str) -> str | None:
    """Why ``value`` is not a usable ``--type`` (a known type, or a prefix ending in ``*`` that
    at least one known type starts with), or None."""
    if value in KNOWN_TYPES:
        return None
    if value.endswith("*"):
        prefix = value[:-1]
        if prefix and "*" not in prefix and any(t.startswith(prefix) for t in KNOWN_TYPES):
            return None
    families = ", ".join(f"{f}.*" for f in FAMILIES)
    return (
        f"an event type ({', '.join(KNOWN_TYPES)}) or a prefix ending in * that one of them starts "
        f"with ({families}, channel.alarm_*)"
    )


@dataclass(frozen=True)
class Filter:
    """Which events to read. Empty tuples and None mean no restriction; several values of one
    field match any of them, and the fields must all match.

    ``since`` is inclusive, ``until`` exclusive; both must be aware datetimes. ``types`` holds
    event types (``infusion.started``) or prefixes (``infusion.*``). Raises ConfigError.
    """

    since: datetime | None = None
    until: datetime | None = None
    pumps: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key, when in (("--since", self.since), ("--until", self.until)):
            if when is not None and when.utcoffset() is None:
                raise ConfigError(FILTER_SOURCE, key, when.isoformat(), "an aware datetime (with a zone)")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ConfigError(
                FILTER_SOURCE, "--until", self.until.isoformat(), f"a time after --since ({self.since})"
            )
        for t in self.types:
            if (problem := type_problem(t)) is not None:
                raise ConfigError(FILTER_SOURCE, "--type", t, problem)


def time_bound(when: datetime) -> str:
    """``when`` in the log's time format, rounded up to the next millisecond if it falls between
    two: the log's times have millisecond resolution, so ``time >= bound`` and ``time < bound``
    then select exactly the events at or after (before) ``when``."""
    utc = when.astimezone(UTC)
    if rest := utc.microsecond % 1000:
        utc += timedelta(microseconds=1000 - rest)
    return iso_ms(utc)


def filter_clause(
    f: Filter, *, after_seq: int | None = None, through_seq: int | None = None
) -> tuple[str, list[Any]]:
    """The SQL ``WHERE`` clause (or ``""``) selecting the events ``f`` lets through, and its
    parameters; ``after_seq`` and ``through_seq`` also bound ``seq`` (exclusive, inclusive).

    Only constant fragments are put into the SQL text; every value is a bound parameter.
    """
    conditions: list[str] = []
    params: list[Any] = []
    if after_seq is not None:
        conditions.append("seq > ?")
        params.append(after_seq)
    if through_seq is not None:
        conditions.append("seq <= ?")
        params.append(through_seq)
    if f.since is not None:
        conditions.append("time >= ?")
        params.append(time_bound(f.since))
    if f.until is not None:
        conditions.append("time < ?")
        params.append(time_bound(f.until))
    for column, values in (("pump", f.pumps), ("patient", f.patients)):
        if values:
            conditions.append(f"{column} IN ({','.join('?' * len(values))})")
            params.extend(values)
    if f.types:
        exact = [t for t in f.types if not t.endswith("*")]
        prefixes = [t[:-1] for t in f.types if t.endswith("*")]
        alternatives = []
        if exact:
            alternatives.append(f"type IN ({','.join('?' * len(exact))})")
            params.extend(exact)
        for prefix in prefixes:
            # substr, not LIKE: LIKE ignores ASCII case and treats the _ in type names as a wildcard.
            alternatives.append("substr(type, 1, ?) = ?")
            params.extend((len(prefix), prefix))
        conditions.append(f"({' OR '.join(alternatives)})")
    if not conditions:
        return "", params
    return "WHERE " + " AND ".join(conditions), params


# -- parsing what the user typed ----------------------------------------------------------------


def parse_time(text: str, option: str = "--since") -> datetime:
    """An aware datetime from ``--since``/``--until``: ISO 8601 with a zone (``Z``, ``+01:00``), or
    a date alone (00:00 UTC that day). A time without a zone is refused: the log is in UTC and the
    ward is not, and a guessed zone would silently shift the window. Raises ConfigError."""
    text = text.strip()
    if _DATE_ONLY.match(text):
        try:
            day = datetime.strptime(text, "%Y-%m-%d")  # noqa: DTZ007 - made aware on the next line
        except ValueError:
            raise ConfigError(FILTER_SOURCE, option, text, _TIME_FORMS) from None
        return day.replace(tzinfo=UTC)
    if text.endswith("z"):
        text = text[:-1] + "Z"  # RFC 3339 allows either case
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(FILTER_SOURCE, option, text, _TIME_FORMS) from None
    if when.utcoffset() is None:
        raise ConfigError(
            FILTER_SOURCE,
            option,
            text,
            "a zone on the time (Z for UTC, or an offset such as +01:00): a time without one is "
            "refused, never guessed",
        )
    return when


def parse_filter(
    since: str | None = None,
    until: str | None = None,
    pumps: Sequence[str] = (),
    patients: Sequence[str] = (),
    types: Sequence[str] = (),
) -> Filter:
    """A Filter from the command line's text. Raises ConfigError naming the option and the value."""
    return Filter(
        since=None if since is None else parse_time(since, "--since"),
        until=None if until is None else parse_time(until, "--until"),
        pumps=tuple(pumps),
        patients=tuple(patients),
        types=tuple(types),
    )


# -- reading -------------------------------------------------------------------------------------


def read_events(db: sqlite3.Connection, source: str, f: Filter = Filter()) -> Iterator[Event]:
    """The events ``f`` lets through, in order of ``seq``, from one snapshot of the log.

    Raises EventLogError if the database cannot be read, ChainBroken for a row that is not an event.
    """
    where, params = filter_clause(f)
    return _guarded(source, lambda: iter_events(db, source, where, params))


def _guarded(source: str, start: Callable[[], Iterator[Event]]) -> Iterator[Event]:
    try:
        yield from start()
    except sqlite3.Error as exc:
        raise EventLogError(source, f"cannot read: {exc}") from exc


def last_seq(db: sqlite3.Connection, source: str) -> int:
    """The newest event's ``seq`` (0 for a log without events). Raises EventLogError."""
    try:
        row = db.execute("SELECT max(seq) FROM events").fetchone()
    except sqlite3.Error as exc:
        raise EventLogError(source, f"cannot read: {exc}") from exc
    return int(row[0]) if row and row[0] is not None else 0


def tail_events(db: sqlite3.Connection, source: str, f: Filter, n: int) -> tuple[list[Event], int]:
    """The last ``n`` events that ``f`` lets through, oldest first, and the newest ``seq`` in the
    log when they were read (where following starts). Raises EventLogError."""
    head = last_seq(db, source)
    if n <= 0:
        return [], head
    inner, params = filter_clause(f, through_seq=head)
    # The subquery's text is a constant fragment and the clause from filter_clause; values are bound.
    where = f"WHERE seq IN (SELECT seq FROM events {inner} ORDER BY seq DESC LIMIT ?)"  # noqa: S608
    return list(_guarded(source, lambda: iter_events(db, source, where, [*params, n]))), head


def poll_events(db: sqlite3.Connection, source: str, f: Filter, after: int) -> tuple[list[Event], int]:
    """The events committed after ``seq`` ``after`` that ``f`` lets through, and the new newest
    ``seq`` (pass it as ``after`` next time: events the filter skips are not read again)."""
    head = last_seq(db, source)
    if head <= after:
        return [], after
    where, params = filter_clause(f, after_seq=after, through_seq=head)
    return list(_guarded(source, lambda: iter_events(db, source, where, params))), head


def follow_events(
    db: sqlite3.Connection,
    source: str,
    f: Filter,
    after: int,
    interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Event]:
    """Every event committed after ``after`` that ``f`` lets through, as it is committed: polls
    every ``interval_s`` seconds, forever. Raises EventLogError."""
    while True:
        batch, after = poll_events(db, source, f, after)
        yield from batch
        sleep(interval_s)


class Span:
    """Counts the events passed through :meth:`through` and remembers the first and last ``seq``."""

    def __init__(self) -> None:
        self.count = 0
        self.first_seq = 0
        self.last_seq = 0

    def through(self, events: Iterable[Event]) -> Iterator[Event]:
        for e in events:
            if not self.count:
                self.first_seq = e.seq
            self.last_seq = e.seq
            self.count += 1
            yield e

    def __str__(self) -> str:
        """``12 events (seq 3-17)``, ``1 event (seq 5)``, ``0 events (none matched)``."""
        if not self.count:
            return "0 events (none matched)"
        seqs = f"seq {self.first_seq}" if self.count == 1 else f"seq {self.first_seq}-{self.last_seq}"
        return f"{self.count} event{'' if self.count == 1 else 's'} ({seqs})"


# -- writers -------------------------------------------------------------------------------------


def jsonl_line(e: Event) -> str:
    """One event as a compact JSON record (``Event.as_dict``: the published schema), no newline."""
    return json.dumps(e.as_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def write_jsonl(events: Iterable[Event], out: TextIO) -> int:
    """One JSON record per line (JSON Lines, UTF-8). Returns the number of events written."""
    n = 0
    for e in events:
        out.write(jsonl_line(e) + "\n")
        n += 1
    return n


#: The CSV columns, in order. ``order`` is the order reference; ``payload`` the canonical JSON text.
CSV_COLUMNS = (
    "seq", "id", "time", "gateway", "type", "pump", "channel", "patient", "order", "clinician",
    "payload", "prev_hash", "hash",
)  # fmt: skip

# A spreadsheet reads a cell starting with one of these as a formula (OWASP "CSV Injection"): tab
# and carriage return too. A leading ' is escaped as well, so removing one leading ' from any text
# cell that starts with one gives back the value exactly.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_PLAIN_NUMBER = re.compile(r"^[+-]?[0-9]+(\.[0-9]+)?$")


def csv_text(value: str) -> str:
    """A text cell made safe for a spreadsheet: ``'`` before a value starting with ``= + - @``, tab,
    carriage return or ``'``; a plain number (``-12.5``) is left alone (it is no formula)."""
    if value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(value):
        return "'" + value
    return value


def csv_row(e: Event) -> list[str | int]:
    """One event as CSV cells in the order of :data:`CSV_COLUMNS` (None becomes an empty cell)."""

    def text(value: str | None) -> str:
        return "" if value is None else csv_text(value)

    return [
        e.seq, text(e.id), text(e.time), text(e.gateway), text(e.type), text(e.pump),
        "" if e.channel is None else e.channel, text(e.patient), text(e.order), text(e.clinician),
        canonical_json(e.payload),  # starts with "{": never a formula, and its JSON stays intact
        text(e.prev_hash), text(e.hash),
    ]  # fmt: skip


def write_csv(events: Iterable[Event], out: TextIO, *, bom: bool = True) -> int:
    """A header of :data:`CSV_COLUMNS`, then one row per event (RFC 4180: commas, ``"`` quoting,
    CRLF). ``bom``: start with a UTF-8 byte-order mark, which Excel needs to read the file as UTF-8.
    ``out`` should be opened with ``newline=""``. Returns the number of events written."""
    if bom:
        out.write("\ufeff")
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    n = 0
    for e in events:
        writer.writerow(csv_row(e))
        n += 1
    return n


def fhir_json(value: Any) -> str:
    """Compact JSON (UTF-8 as is) of a FHIR resource whose numbers are ``Decimal``: each written as
    the JSON number it is, digit for digit (``4.00`` stays ``4.00``: FHIR decimals keep their
    precision), never through a float. Raises ValueError for a NaN or an infinity."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        return str(value)  # Decimal's str is valid JSON number syntax ("4.00", "-0", "1E+2")
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k), ensure_ascii=False)}:{fhir_json(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(fhir_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def write_fhir(events: Iterable[Event], out: TextIO, *, source: str = "event log") -> int:
    """The FHIR resources of the events (``pumpgw.fhir.events.event_to_fhir``) as NDJSON, one
    resource per line; events without a FHIR form are skipped. Returns the number of resources.

    Raises EnvironmentProblem before writing anything if the FHIR mapping is not installed, and
    EventLogError (naming ``source`` and the event) for an event that cannot be mapped.
    """
    try:
        from pumpgw.fhir.events import event_to_fhir
    except ImportError as exc:
        raise EnvironmentProblem(
            f"FHIR export is not available: {exc}", "use a pumpgw installation that includes pumpgw.fhir"
        ) from exc
    n = 0
    for e in events:
        try:
            lines = [fhir_json(resource) for resource in event_to_fhir(e)]
        except ValueError as exc:  # the payload does not fit its type (an edited log, another version)
            raise EventLogError(
                source, f"event seq {e.seq} ({e.type}) has no valid FHIR form: {_one_line(exc)}"
            ) from exc
        for line in lines:
            out.write(line + "\n")
            n += 1
    return n


def _one_line(exc: ValueError) -> str:
    """A pydantic ValidationError as ``key: problem; key: problem``; any other error on one line,
    cut at 400 characters (a summary line, not a dump)."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(payload)'}: {err['msg']}" for err in exc.errors()
        )
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:400] + " ..."


# -- the tail's text form ------------------------------------------------------------------------

_TYPE_WIDTH = max(len(t) for t in KNOWN_TYPES)


def _printable(text: str) -> str:
    """``text`` with every non-printable character escaped, so a pump name or an alarm text can
    never drive the terminal (ANSI and C1 escape sequences)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def text_line(e: Event) -> str:
    """One readable line: time, seq, type, pump/channel, references, compact payload."""
    where = "-" if e.pump is None else e.pump if e.channel is None else f"{e.pump}/{e.channel}"
    named = (("patient", e.patient), ("order", e.order), ("clinician", e.clinician))
    refs = [f"{k}={v}" for k, v in named if v is not None]
    parts = [e.time, f"#{e.seq:<6}", f"{e.type:<{_TYPE_WIDTH}}", where, *refs]
    if e.payload:
        parts.append(json.dumps(e.payload, ensure_ascii=False, separators=(",", ":")))
    return _printable(" ".join(parts))


# -- writing a file atomically -------------------------------------------------------------------


def _output_problem(path: Path, exc: OSError) -> EnvironmentProblem:
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EnvironmentProblem(
            f"cannot write {path}: {exc.strerror}",
            f"write to a directory this user may write to ({os.getuid()})",
        )
    return EnvironmentProblem(
        f"cannot write {path}: {exc.strerror}", f"check that {path.parent} exists, is writable and has space"
    )


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[TextIO]:
    """A text file (UTF-8, ``newline=""``) that appears at ``path`` whole, or not at all.

    Written to a temporary file beside ``path`` (mode 0600: exports name patients), fsynced and
    renamed over ``path`` when the block ends without an exception; otherwise removed. A reader
    never sees a half-written export under the final name. Raises EnvironmentProblem.
    """
    if path.is_dir():
        raise EnvironmentProblem(f"cannot write {path}: it is a directory", "name a file to write")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _output_problem(path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _output_problem(path, exc) from None
        raise
    with contextlib.suppress(OSError):  # the rename is done; a directory fsync is best effort
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
