"""End to end: ``pumpgw demo`` as a subprocess, against the bench rig, a real mosquitto and real
ports; every pump polled, events committed and delivered, nothing left running afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.eventlog import EventStore
from pumpgw.gateway.library import parse_library

pytestmark = pytest.mark.slow

PUMPGW = str(Path(sys.executable).with_name("pumpgw"))

#: The default rig: one pump of each protocol (`pumpgw rig up`).
RIG_PUMPS = {"rig-modbus-1", "rig-modbus-rtu-1", "rig-newera-1", "rig-alaris-1"}
EVENT_SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "schema" / "events-1.schema.json"
EXAMPLE_LIBRARY = Path(__file__).resolve().parents[1] / "gateway" / "examples" / "drug-library.example.toml"
EXAMPLE_HASH = parse_library(EXAMPLE_LIBRARY.read_bytes(), "example").hash


def processes_with_marker(marker: str) -> list[str]:
    """Command lines of live processes whose environment carries ``marker`` (children inherit it)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue  # a zombie holds nothing; its parent has gone
        if f"PUMPGW_TEST_MARKER={marker}".encode() in environ.split(b"\0"):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid}: {cmdline}")
    return found


def demo_env(marker: str) -> dict[str, str]:
    return {**os.environ, "PUMPGW_TEST_MARKER": marker}


@contextlib.contextmanager
def running_demo(state: Path, marker: str) -> Iterator[subprocess.Popen[str]]:
    """``pumpgw demo`` (no duration) started and past its first poll of every pump.

    Fails the test if the demo ends before it says "all pumps polled" (pytest-timeout bounds the
    wait). The caller stops it; leaving the block kills it if the caller did not.
    """
    with subprocess.Popen(
        [PUMPGW, "demo", "--state-dir", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=demo_env(marker),
    ) as proc:  # fmt: skip
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "all pumps polled" in line:
                break
        else:
            pytest.fail("the demo ended before polling every pump:\n" + "".join(seen))
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)


def check_state(state: Path) -> list[dict[str, object]]:
    """The event log verifies, and holds what a demo run must have produced."""
    store = EventStore(state / "events.sqlite3", "check", FakeClock())
    try:
        n = store.verify()
        events = [e.as_dict() for e in store.read_after(0, limit=10_000)]
        delivered = store.delivered_seq("mqtt")
    finally:
        store.close()
    assert n == len(events) > 0
    # Every event the running gateway wrote validates against the published schema (an
    # independent validator, reading the file other tools read).
    validator = Draft202012Validator(json.loads(EVENT_SCHEMA.read_text(encoding="utf-8")))
    for event in events:
        validator.validate(event)
    types = [e["type"] for e in events]
    assert types[0] == "gateway.started"
    assert types[-1] == "gateway.stopped"
    identified = {e["pump"] for e in events if e["type"] == "pump.identified"}
    assert identified == RIG_PUMPS
    # The example library, signed with the demo's keys, verified and in use before any pump is
    # identified; the rig's pumps run the library version it expects.
    (loaded,) = [e for e in events if e["type"] == "library.loaded"]
    assert loaded["payload"]["hash"] == EXAMPLE_HASH
    assert (loaded["payload"]["author"], loaded["payload"]["reviewer"]) == ("demo author", "demo reviewer")
    assert loaded["payload"]["example"] is True
    assert types.index("library.loaded") < types.index("pump.identified")
    assert "library.unavailable" not in types
    assert "pump.library_outdated" not in types
    # Every pump polled: every channel reported its state (the rig starts them infusing).
    polled = {
        (e["pump"], e["channel"], e["payload"]["to"]) for e in events if e["type"] == "channel.state_changed"
    }
    assert {
        ("rig-modbus-1", 1, "infusing"),
        ("rig-modbus-1", 2, "infusing"),
        ("rig-modbus-rtu-1", 1, "infusing"),
        ("rig-modbus-rtu-1", 2, "infusing"),
        ("rig-newera-1", 1, "infusing"),
        ("rig-alaris-1", 1, "infusing"),
    } <= polled
    # Streamed to the local mosquitto, flushed on stop: only gateway.stopped (written after the
    # MQTT part has stopped) waits in the outbox for the next start.
    assert delivered == n - 1, (delivered, n)
    return events


def test_demo_with_duration_runs_polls_logs_and_leaves_nothing(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    state = tmp_path / "state"
    started = time.monotonic()
    proc = subprocess.run(
        [PUMPGW, "demo", "--duration", "5", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=120, check=False, env=demo_env(marker),
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert 5 <= elapsed < 60
    assert "all pumps polled" in proc.stderr
    assert "Traceback" not in proc.stderr
    # The live view printed tables with every channel and the moving numbers.
    assert "rig-modbus-1" in proc.stdout
    assert "rig-newera-1" in proc.stdout
    assert "Noradrenaline" in proc.stdout
    assert "0.08 mg/mL" in proc.stdout
    assert "drug library: Example library v7 (sha256:" in proc.stdout
    assert "v7 ok" in proc.stdout  # the Modbus pumps' library matches
    check_state(state)
    assert processes_with_marker(marker) == []
    # Broker and rig files are the demo's own; the PTY went with the rig process.
    assert (state / "mosquitto" / "mosquitto.conf").exists()


def test_ctrl_c_stops_everything_in_order(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    state = tmp_path / "state"
    with running_demo(state, marker) as proc:
        assert proc.stderr is not None
        # The rig and the broker run while the demo does.
        assert len(processes_with_marker(marker)) >= 3, processes_with_marker(marker)
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(30) == 0, rest
    assert "Traceback" not in rest
    check_state(state)
    assert processes_with_marker(marker) == []


def test_killed_demo_takes_its_children_with_it(tmp_path: Path) -> None:
    """SIGKILL gives no chance to clean up: the kernel ends the children (PR_SET_PDEATHSIG)."""
    marker = uuid.uuid4().hex
    with running_demo(tmp_path / "state", marker) as proc:
        proc.kill()
        proc.wait(30)
    for _ in range(100):
        if not processes_with_marker(marker):
            break
        time.sleep(0.05)  # the children get SIGTERM from the kernel and exit on their own time
    assert processes_with_marker(marker) == []


def test_events_verify_command_on_the_demo_log(tmp_path: Path) -> None:
    state = tmp_path / "state"
    run = subprocess.run(
        [PUMPGW, "demo", "--duration", "2", "--no-mqtt", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    ok = subprocess.run(
        [PUMPGW, "events", "verify", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "hash chain intact; last event seq" in ok.stdout
    db = sqlite3.connect(state / "events.sqlite3")
    db.execute("""UPDATE events SET payload = '{"tampered": true}' WHERE seq = 2""")
    db.commit()
    db.close()
    bad = subprocess.run(
        [PUMPGW, "events", "verify", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert "hash chain broken at event seq 2" in bad.stderr


def test_the_demo_signs_and_installs_the_example_library_and_reuses_its_keys(tmp_path: Path) -> None:
    state = tmp_path / "state"
    keys = []
    for _ in range(2):
        run = subprocess.run(
            [PUMPGW, "demo", "--duration", "3", "--no-mqtt", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        key_files = sorted((state / "demo-keys").iterdir())
        assert [k.name for k in key_files] == ["demo-author.key", "demo-reviewer.key"]
        assert all(k.stat().st_mode & 0o777 == 0o600 for k in key_files)
        keys.append([k.read_bytes() for k in key_files])
    assert keys[0] == keys[1]  # reused, not made anew
    trust = (state / "demo-trust-store.toml").read_text()
    assert 'name = "demo author"' in trust
    assert 'roles = ["reviewer"]' in trust
    assert (state / "library" / "active.toml").read_bytes() == EXAMPLE_LIBRARY.read_bytes()
    store = EventStore(state / "events.sqlite3", "check", FakeClock())
    try:
        loaded = [e for e in store.read_after(0, limit=10_000) if e.type == "library.loaded"]
    finally:
        store.close()
    assert [e.payload["hash"] for e in loaded] == [EXAMPLE_HASH, EXAMPLE_HASH]  # one per run


def test_demo_log_format_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [PUMPGW, "--log-format", "json", "demo", "--duration", "2", "--no-mqtt", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    polled = [r for r in records if r["message"] == "first poll of pump complete"]
    assert {r["pump"] for r in polled} == RIG_PUMPS
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)


def test_a_dying_part_is_reported_not_hung_on(tmp_path: Path) -> None:
    """Kill the rig under a running demo: the demo names the failed part and exits 1, tidily."""
    marker = uuid.uuid4().hex
    state = tmp_path / "state"
    with running_demo(state, marker) as proc:
        assert proc.stderr is not None
        (rig,) = [p for p in processes_with_marker(marker) if "pumpgw.gateway.cli rig" in p]
        os.kill(int(rig.split(":")[0]), signal.SIGKILL)
        rest = proc.stderr.read()
        assert proc.wait(60) == 1, rest
    assert "pumpgw: rig failed: EnvironmentProblem: the bench rig exited with code -9" in rest
    assert "Traceback" not in rest
    assert processes_with_marker(marker) == []
    events = EventStore(state / "events.sqlite3", "check", FakeClock())
    try:
        assert events.verify() > 0
        assert events.read_after(events.last_seq - 1)[0].type == "gateway.stopped"
    finally:
        events.close()
