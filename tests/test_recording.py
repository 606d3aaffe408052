"""Link recordings: the file format, cutting into exchanges, replay and its divergence report."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pumpgw.gateway.errors import ConfigError
from pumpgw.rig.recording import Chunk, Recorder, Recording, Replayer, exchanges, load_recording

STARTED = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def _record(path: Path, chunks: list[tuple[str, bytes]]) -> None:
    recorder = Recorder(
        path, pump="p1", protocol="newera", started=STARTED, clock_start=10.0, settings={"address": 0}
    )
    for i, (who, data) in enumerate(chunks):
        if who == "host":
            recorder.host_sent(data, 10.0 + i, None)
        else:
            recorder.device_sent(data, 10.0 + i, None)
    recorder.close()


def test_a_recording_reads_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    _record(path, [("host", b"\x02ab"), ("host", b"c\x03"), ("pump", b"\x0200S\x03")])
    header = json.loads(path.read_text().splitlines()[0])
    assert header["format"] == "pumpgw-link-recording"
    assert header["started"] == "2026-11-22T03:00:00+00:00"
    rec = load_recording(path)
    assert rec.protocol == "newera"
    assert rec.settings == {"address": 0}
    assert rec.chunks == (
        Chunk(0.0, "host", b"\x02ab"),
        Chunk(1.0, "host", b"c\x03"),
        Chunk(2.0, "pump", b"\x0200S\x03"),
    )


def test_chunks_are_cut_into_exchanges_whatever_the_chunking() -> None:
    chunks = [
        Chunk(0, "host", b"RA"),
        Chunk(0, "host", b"T\r"),
        Chunk(0, "pump", b"00S"),
        Chunk(0, "pump", b"\r"),
        Chunk(0, "host", b"DIS\r"),
        Chunk(0, "pump", b"00I1.0\r"),
    ]
    assert [(e.request, e.reply) for e in exchanges(chunks)] == [
        (b"RAT\r", b"00S\r"),
        (b"DIS\r", b"00I1.0\r"),
    ]


def test_replay_answers_what_was_recorded_for_requests_split_anywhere() -> None:
    rec = load_recording_from([("host", b"RAT\r"), ("pump", b"00S\r"), ("host", b"DIS\r"), ("pump", b"X\r")])
    replayer = Replayer(rec)
    assert replayer.receive(b"RA", 0) == b""
    assert replayer.receive(b"T\rDI", 0) == b"00S\r"
    assert replayer.receive(b"S\r", 0) == b"X\r"
    assert replayer.finished
    assert replayer.divergence is None


def test_replay_falls_silent_at_the_first_different_byte_and_says_where() -> None:
    rec = load_recording_from([("host", b"RAT\r"), ("pump", b"00S\r"), ("host", b"DIS\r"), ("pump", b"X\r")])
    replayer = Replayer(rec)
    assert replayer.receive(b"RAT\r", 0) == b"00S\r"
    assert replayer.receive(b"DIX", 0) == b""
    assert replayer.divergence is not None
    assert replayer.divergence.exchange == 2
    assert replayer.divergence.expected == b"DIS\r"
    assert replayer.divergence.received == b"DIX"
    assert "exchange 2" in str(replayer.divergence)
    assert replayer.receive(b"DIS\r", 0) == b""  # silent from then on
    assert not replayer.finished


def test_bytes_after_the_end_of_the_recording_are_a_divergence() -> None:
    replayer = Replayer(load_recording_from([("host", b"A"), ("pump", b"B")]))
    assert replayer.receive(b"A", 0) == b"B"
    assert replayer.receive(b"more", 0) == b""
    assert replayer.divergence is not None
    assert replayer.divergence.exchange == 2


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('{"t": 1, "from": "host", "hex": "zz"}', "line 2.hex"),
        ('{"t": 1, "from": "both", "hex": "00"}', "line 2.from"),
        ('{"t": -1, "from": "host", "hex": "00"}', "line 2.t"),
        ("not json", "line 2"),
        ('{"t": 1, "from": "host", "hex": "00", "conn": 0}', "line 2.conn"),
    ],
)
def test_a_damaged_recording_is_refused_naming_the_line(tmp_path: Path, line: str, key: str) -> None:
    path = tmp_path / "bad.jsonl"
    _record(path, [])
    with path.open("a") as f:
        f.write(line + "\n")
    with pytest.raises(ConfigError) as info:
        load_recording(path)
    assert info.value.key == key


def test_a_file_that_is_not_a_recording_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"format": "something-else"}\n')
    with pytest.raises(ConfigError, match="format"):
        load_recording(path)


def load_recording_from(chunks: list[tuple[str, bytes]]) -> Recording:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.jsonl"
        _record(path, chunks)
        return load_recording(path)
