"""The gateway uses only a verified drug library, records it, and watches each pump's library version.

Real parts: a library signed with keys made here and installed with the library store, the whole
gateway (event log, library part, monitor, pollers) against bench-rig pumps on loopback TCP. Time
in the pumps is a FakeClock; the tests wait for what the monitor reports, never for a time.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import (
    EXAMPLE,
    PUMP,
    Running,
    gateway_on_rig,
    install,
    of_type,
    read_events,
    release,
    tamper,
    trust_store,
)

from pumpgw.drivers.base import PumpIdentity
from pumpgw.gateway.app import LibraryPart, load_library
from pumpgw.gateway.broker import MosquittoBroker
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.config import LibrarySection, parse_config
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.library import parse_library
from pumpgw.gateway.library_fitness import CURRENT, NO_LIBRARY, OUTDATED, LibraryState
from pumpgw.gateway.library_signing import (
    TrustStore,
    VerifiedLibrary,
    render_trust_store,
)
from pumpgw.gateway.library_store import LibraryStore, approvals_path
from pumpgw.gateway.monitor import BedsideMonitor
from pumpgw.rig.bench_rig import LIBRARY_VERSION, OLD_LIBRARY_VERSION, BenchRig

# --- loading only a verified library -------------------------------------------------------------


@pytest.mark.hazard("HAZ-004")
async def test_a_verified_library_is_loaded_recorded_and_pumps_are_judged_against_it(tmp_path: Path) -> None:
    trust_path, verified = install(tmp_path)
    clock = FakeClock()
    async with (
        BenchRig(clock, modbus_pumps=1, newera_pumps=1) as rig,
        gateway_on_rig(tmp_path, {"trust_store": str(trust_path)}, rig, clock) as running,
    ):
        monitor = running.gateway.monitor
        await running.until(lambda: all(v.polls > 0 for v in monitor.pumps.values()))
        assert monitor.library.verified is not None
        assert monitor.library.verified.library.hash == verified.library.hash
        status = monitor.status_json(PUMP)["library"]
        assert status == {
            "fit": True,
            "code": CURRENT,
            "reason": status["reason"],
            "reported": str(LIBRARY_VERSION),
            "expected": str(LIBRARY_VERSION),
        }
        assert monitor.status_json("rig-newera-1")["library"]["code"] == "pump-reports-no-library"
    events = read_events(tmp_path / "state")
    (loaded,) = of_type(events, "library.loaded")
    assert loaded.payload == {
        "name": "Example library",
        "version": 7,
        "hash": verified.library.hash,
        "example": True,
        "author": "Ann Author",
        "author_key_id": verified.author_key_id,
        "reviewer": "Rob Reviewer",
        "reviewer_key_id": verified.reviewer_key_id,
        "pump_libraries": [{"model": "RIG-MC2", "version": "7"}],
    }
    types = [e.type for e in events]
    # Recorded before any pump is identified: every pump is judged against a known library.
    assert types.index("library.loaded") < types.index("pump.identified")
    assert not of_type(events, "library.unavailable")
    assert not of_type(events, "pump.library_outdated")


@pytest.mark.hazard("HAZ-004")
async def test_a_library_altered_after_signing_is_refused_and_pumps_are_still_polled(tmp_path: Path) -> None:
    trust_path, verified = install(tmp_path)
    tamper(tmp_path)
    clock = FakeClock()
    async with (
        BenchRig(clock, modbus_pumps=1, newera_pumps=0) as rig,
        gateway_on_rig(tmp_path, {"trust_store": str(trust_path)}, rig, clock) as running,
    ):
        monitor = running.gateway.monitor
        await running.until(lambda: monitor.pumps[PUMP].polls >= 2)
        assert monitor.library.verified is None
        fitness = monitor.status_json(PUMP)["library"]
        assert (fitness["fit"], fitness["code"]) == (False, NO_LIBRARY)
        assert monitor.pumps[PUMP].link == "up"
    events = read_events(tmp_path / "state")
    assert not of_type(events, "library.loaded")
    (unavailable,) = of_type(events, "library.unavailable")
    reason = unavailable.payload["reason"]
    assert "changed after it was approved" in reason
    assert verified.library.hash in reason  # what was approved, and the different hash found
    assert re.search(r"this library is sha256:[0-9a-f]{64}", reason)
    assert unavailable.payload["required"] is True
    # Monitoring goes on: the pump was identified and its channels reported.
    assert of_type(events, "pump.identified")
    assert {(e.channel, e.payload["to"]) for e in of_type(events, "channel.state_changed")} >= {
        (1, "infusing"),
        (2, "infusing"),
    }
    assert not of_type(events, "pump.library_outdated")


@pytest.mark.hazard("HAZ-004")
@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda tmp: approvals_path(tmp / "state" / "library" / "active.toml").unlink(), "not approved"),
        (
            lambda tmp: (tmp / "trust.toml").write_text(
                render_trust_store(TrustStore(trust_store().keys[:1]))
            ),
            "the key is not in the trust store",
        ),
        (lambda tmp: (tmp / "trust.toml").unlink(), "cannot read the trust store"),
        (lambda tmp: (tmp / "state" / "library" / "active.toml").unlink(), "no library installed"),
    ],
    ids=["no-approvals", "reviewer-not-trusted", "no-trust-store-file", "nothing-installed"],
)
def test_no_library_is_used_unless_it_verifies(
    tmp_path: Path, break_it: Callable[[Path], object], expected: str
) -> None:
    trust_path, _ = install(tmp_path)
    section = LibrarySection(trust_store=trust_path)
    assert load_library(section, tmp_path / "state" / "library").verified is not None
    break_it(tmp_path)
    state = load_library(section, tmp_path / "state" / "library")
    assert state.verified is None
    assert state.reason is not None
    assert expected in state.reason
    assert "\n" not in state.reason


@pytest.mark.hazard("HAZ-004")
def test_without_a_trust_store_configured_no_library_is_used(tmp_path: Path) -> None:
    install(tmp_path)  # installed, but the gateway is given no keys to check it with
    state = load_library(LibrarySection(), tmp_path / "state" / "library")
    assert state.verified is None
    assert state.reason is not None
    assert "no trust store is configured" in state.reason


async def test_a_monitoring_only_gateway_says_so(tmp_path: Path, eventlog: EventLog) -> None:
    monitor = BedsideMonitor(eventlog, {}, FakeClock())
    part = LibraryPart(LibrarySection(required=False), tmp_path / "library", eventlog, monitor)
    await part.check(force=True)
    (event,) = await eventlog.read_after(0)
    assert event.type == "library.unavailable"
    assert event.payload["required"] is False
    assert "monitoring only" in monitor.library.summary()


def test_the_library_dir_defaults_to_the_state_dir(tmp_path: Path) -> None:
    config = parse_config({"gateway": {"state_dir": str(tmp_path)}}, "test")
    assert config.library_dir == tmp_path / "library"
    assert config.library.required is True
    other = parse_config({"library": {"dir": "/srv/lib", "required": False}}, "test")
    assert other.library_dir == Path("/srv/lib")


def loaded_library(monitor: BedsideMonitor) -> str | None:
    """The hash of the library the monitor judges pumps against, if any."""
    library = monitor.library.library
    return None if library is None else library.hash


# --- the library version on each pump ------------------------------------------------------------


@pytest.mark.hazard("HAZ-003")
async def test_a_pump_with_an_old_library_is_outdated_until_it_reports_the_current_one(
    tmp_path: Path,
) -> None:
    trust_path, verified = install(tmp_path)
    clock = FakeClock()
    async with BenchRig(clock, modbus_pumps=1, newera_pumps=0) as rig:
        rig.set_fault(PUMP, "old-library")
        async with gateway_on_rig(tmp_path, {"trust_store": str(trust_path)}, rig, clock) as running:
            monitor = running.gateway.monitor
            view = monitor.pumps[PUMP]
            await running.until(lambda: view.polls > 0)
            status = monitor.status_json(PUMP)["library"]
            assert (status["fit"], status["code"]) == (False, OUTDATED)
            assert (status["reported"], status["expected"]) == (
                str(OLD_LIBRARY_VERSION),
                str(LIBRARY_VERSION),
            )
            assert "pump reports drug library version 6" in status["reason"]
            assert not monitor.fitness(PUMP).fit

            # A reconnection that reports the same old version is not a new event.
            await reconnect(rig, running, clock)
            assert monitor.fitness(PUMP).code == OUTDATED

            # The pump gets the current library; the gateway sees it when it identifies the pump
            # again, which it does on every (re)connection.
            rig.clear_faults(PUMP)
            await reconnect(rig, running, clock)
            await running.until(lambda: monitor.fitness(PUMP).fit)
            assert monitor.status_json(PUMP)["library"]["code"] == CURRENT
    events = read_events(tmp_path / "state")
    (outdated,) = of_type(events, "pump.library_outdated")
    assert outdated.pump == PUMP
    assert outdated.payload == {
        "model": "RIG-MC2",
        "serial": "RIG-MB-0001",
        "reported": "6",
        "expected": "7",
        "library_version": 7,
        "library_hash": verified.library.hash,
        "reason": outdated.payload["reason"],
    }
    assert outdated.payload["reason"].startswith(
        "pump reports drug library version 6; this gateway's library (Example library v7) expects 7 for RIG-MC2"
    )
    (current,) = of_type(events, "pump.library_current")
    assert (current.pump, current.payload["reported"], current.payload["expected"]) == (PUMP, "7", "7")
    types = [e.type for e in events]
    assert types.index("pump.library_outdated") < types.index("pump.library_current")
    assert len(of_type(events, "pump.identified")) == 3


async def reconnect(rig: BenchRig, running: Running, clock: FakeClock) -> None:
    """Drop the pump's link until the gateway declares it lost, then let it come back."""
    view = running.gateway.monitor.pumps[PUMP]
    rig.set_fault(PUMP, "disconnect", seconds=5)
    await running.until(lambda: view.link == "lost")
    clock.advance(5)
    polls = view.polls
    await running.until(lambda: view.link == "up" and view.polls > polls)


def retained(broker: MosquittoBroker, topic: str) -> dict[str, Any]:
    """The retained message on ``topic``, as an independent client (mosquitto_sub) sees it."""
    sub = shutil.which("mosquitto_sub")
    if sub is None:
        pytest.skip("mosquitto_sub is not installed (Debian package mosquitto-clients)")
    proc = subprocess.run(
        [sub, "-h", broker.host, "-p", str(broker.port), "-t", topic, "-q", "1", "-C", "1", "-W", "10"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    message: dict[str, Any] = json.loads(proc.stdout)
    return message


@pytest.mark.hazard("HAZ-003")
async def test_fleet_monitoring_sees_the_library_and_an_outdated_pump_in_the_retained_status(
    tmp_path: Path, require_mosquitto: str
) -> None:
    trust_path, verified = install(tmp_path)
    clock = FakeClock()
    async with (
        MosquittoBroker(tmp_path / "broker") as broker,
        BenchRig(clock, modbus_pumps=1, newera_pumps=0) as rig,
    ):
        rig.set_fault(PUMP, "old-library")
        mqtt = {"enabled": True, "host": broker.host, "port": broker.port}
        async with gateway_on_rig(tmp_path, {"trust_store": str(trust_path)}, rig, clock, mqtt) as running:
            gateway = running.gateway
            assert gateway.mqtt is not None
            publisher = gateway.mqtt
            await running.until(lambda: publisher.connected and gateway.monitor.pumps[PUMP].polls > 0)
            status = await asyncio.to_thread(retained, broker, publisher.status_topic)
            pump = await asyncio.to_thread(retained, broker, publisher.pump_topic(PUMP))
    assert status["state"] == "online"
    assert status["library"]["available"] is True
    assert status["library"]["hash"] == verified.library.hash
    assert (status["library"]["author"], status["library"]["reviewer"]) == ("Ann Author", "Rob Reviewer")
    assert pump["identity"]["library_version"] == "6"
    assert pump["library"]["fit"] is False
    assert (pump["library"]["code"], pump["library"]["reported"], pump["library"]["expected"]) == (
        OUTDATED,
        "6",
        "7",
    )


@pytest.mark.hazard("HAZ-003")
async def test_a_new_library_release_is_picked_up_and_pumps_judged_again(tmp_path: Path) -> None:
    """Installing a release whose pump library is 8 makes the rig's pumps (on 7) outdated at once."""
    trust_path, _ = install(tmp_path)
    clock = FakeClock()
    async with (
        BenchRig(clock, modbus_pumps=1, newera_pumps=0) as rig,
        gateway_on_rig(tmp_path, {"trust_store": str(trust_path)}, rig, clock) as running,
    ):
        monitor = running.gateway.monitor
        await running.until(lambda: monitor.pumps[PUMP].polls > 0)
        assert monitor.fitness(PUMP).code == CURRENT
        assert not await running.gateway.library.check()  # nothing changed on disk
        v8 = LibraryStore(tmp_path / "state" / "library").install(release(tmp_path, 8, "8"), trust_store())
        assert await running.gateway.library.check()
        assert loaded_library(monitor) == v8.library.hash
        fitness = monitor.fitness(PUMP)
        assert (fitness.code, fitness.reported, fitness.expected) == (OUTDATED, "7", "8")
        assert "install the matching" not in fitness.reason
        assert "update the pump's library" in fitness.reason
        assert monitor.status_json(PUMP)["library"]["fit"] is False
        # The library then altered on disk: none is used, and that is recorded too.
        tamper(tmp_path)
        assert await running.gateway.library.check()
        assert loaded_library(monitor) is None
        assert monitor.fitness(PUMP).code == NO_LIBRARY
    events = read_events(tmp_path / "state")
    assert [e.payload["version"] for e in of_type(events, "library.loaded")] == [7, 8]
    (outdated,) = of_type(events, "pump.library_outdated")
    assert (
        outdated.payload["reported"],
        outdated.payload["expected"],
        outdated.payload["library_version"],
    ) == (
        "7",
        "8",
        8,
    )
    assert len(of_type(events, "library.unavailable")) == 1


# --- the monitor alone ---------------------------------------------------------------------------


def identity(version: str | None) -> PumpIdentity:
    return PumpIdentity("modbus-tcp", "pumpgw bench rig", "RIG-MC2", "SN-1", "1.0.0", version, 2)


@pytest.mark.hazard("HAZ-003")
async def test_outdated_is_written_once_per_change_and_current_when_back_in_line(eventlog: EventLog) -> None:
    library = parse_library(EXAMPLE.read_bytes(), str(EXAMPLE))
    verified = VerifiedLibrary(
        library, "Ann Author", "Rob Reviewer", "ed25519:" + "a" * 16, "ed25519:" + "b" * 16
    )
    published: list[dict[str, Any]] = []
    monitor = BedsideMonitor(
        eventlog, {"p1": "modbus-tcp"}, FakeClock(), publish=lambda p, s: published.append(s)
    )
    await monitor.on_identity("p1", identity("6"))  # identified before the library is known
    assert monitor.fitness("p1").code == NO_LIBRARY
    await monitor.set_library(LibraryState(verified))
    assert published[-1]["library"]["code"] == OUTDATED
    await monitor.on_identity("p1", identity("6"))  # reconnected, same versions: no new event
    await monitor.on_identity("p1", identity("5"))  # another old version: a new event
    await monitor.set_library(LibraryState(None, "gone"))  # library gone: the pump is not "current"
    await monitor.set_library(LibraryState(verified))  # back, pump still on 5: already said
    await monitor.on_identity("p1", identity("7"))
    await monitor.on_identity("p1", identity("7"))
    events = [(e.type, e.payload.get("reported")) for e in await eventlog.read_after(0)]
    assert [e for e in events if e[0] != "pump.identified"] == [
        ("pump.library_outdated", "6"),
        ("pump.library_outdated", "5"),
        ("pump.library_current", "7"),
    ]
    assert published[-1]["library"] == {
        "fit": True,
        "code": CURRENT,
        "reason": monitor.fitness("p1").reason,
        "reported": "7",
        "expected": "7",
    }


async def test_the_library_part_republishes_the_gateway_status_only_on_change(
    tmp_path: Path, eventlog: EventLog
) -> None:
    trust_path, _ = install(tmp_path)
    monitor = BedsideMonitor(eventlog, {}, FakeClock())
    published: list[dict[str, Any]] = []
    part = LibraryPart(
        LibrarySection(trust_store=trust_path),
        tmp_path / "state" / "library",
        eventlog,
        monitor,
        publish=published.append,
    )
    assert await part.check(force=True)
    assert await part.check(force=True)  # loaded again, the same library: nothing new to say
    assert [p["library"]["version"] for p in published] == [7]
    assert published[0]["library"]["available"] is True
    assert [e.type for e in await eventlog.read_after(0)] == ["library.loaded"]
