"""The gateway says whether it may auto-program, and degrades safely when its log cannot write.

Real parts: the whole gateway against bench-rig pumps on loopback, its SQLite log on disk. A full
disk is made real for SQLite with ``PRAGMA max_page_count``: SQLite then fails the commit with
SQLITE_FULL, "database or disk is full", the same error a full file system gives (a real full
file system would need a loop mount, which the test machines do not allow).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import PUMP, gateway_on_rig, install, read_events

from pumpgw.drivers.base import ChannelState
from pumpgw.gateway.app import Gateway
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import EventLogError
from pumpgw.gateway.events import EventType
from pumpgw.rig.bench_rig import BenchRig


async def on_log_thread(gateway: Gateway, sql: str) -> Any:
    """Run ``sql`` on the log's own connection, on its own thread (never beside a commit)."""
    store = gateway.events.store
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        gateway.events._executor,
        lambda: store._db.execute(sql).fetchone(),
    )


async def fill_the_disk(gateway: Gateway) -> None:
    """Cap the database at its current size and fill what is left, as another program filling the
    disk would: from now on every commit of the log fails with SQLITE_FULL."""
    (pages,) = await on_log_thread(gateway, "PRAGMA page_count")
    await on_log_thread(gateway, f"PRAGMA max_page_count = {pages + 2}")
    await on_log_thread(gateway, "CREATE TABLE IF NOT EXISTS filler (x BLOB)")
    for size in (4096, 512, 64, 8, 1):
        while True:
            try:
                await on_log_thread(gateway, f"INSERT INTO filler VALUES (randomblob({size}))")
            except sqlite3.OperationalError as exc:
                if "full" not in str(exc):
                    raise
                break


async def append_until_refused(gateway: Gateway, extra: int) -> EventLogError:
    for i in range(10_000):
        try:
            await gateway.events.append(EventType.ALARM_RAISED, {"alarm": f"filler {i} " + "x" * extra})
        except EventLogError as exc:
            return exc
    raise AssertionError("the log never filled up")


async def test_readiness_names_every_reason_and_clears_when_all_is_well(tmp_path: Path) -> None:
    trust_path, _ = install(tmp_path)
    clock = FakeClock()
    async with (
        BenchRig(clock, modbus_pumps=1, newera_pumps=0) as rig,
        gateway_on_rig(tmp_path, {"trust_store": str(trust_path)}, rig, clock) as running,
    ):
        gw = running.gateway
        await running.until(lambda: gw.monitor.pumps[PUMP].polls > 0)
        assert gw.readiness(PUMP).allowed, gw.readiness(PUMP).reasons
        assert gw.readiness().allowed
        unknown = gw.readiness("no-such-pump")
        assert not unknown.allowed
        assert unknown.reasons == ("pump 'no-such-pump' is not configured on this gateway",)
        status = await gw.status_json()
        assert status["auto_programming"] == {"available": True, "reasons": []}
        assert status["eventlog"]["health"]["ok"] is True
        assert status["eventlog"]["max_events"] == 2_000_000


async def test_without_a_library_auto_programming_is_unavailable_and_says_why(tmp_path: Path) -> None:
    clock = FakeClock()
    async with (
        BenchRig(clock, modbus_pumps=1, newera_pumps=0) as rig,
        gateway_on_rig(tmp_path, {}, rig, clock) as running,
    ):
        gw = running.gateway
        await running.until(lambda: gw.monitor.pumps[PUMP].polls > 0)
        ready = gw.readiness(PUMP)
        assert not ready.allowed
        assert any("no verified drug library" in r and "trust store" in r for r in ready.reasons)


@pytest.mark.hazard("HAZ-013")
@pytest.mark.hazard("HAZ-014")
async def test_a_full_disk_refuses_auto_programming_leaves_infusions_alone_and_recovers(
    tmp_path: Path,
) -> None:
    trust_path, _ = install(tmp_path)
    clock = FakeClock()
    async with (
        BenchRig(clock, modbus_pumps=1, newera_pumps=0) as rig,
        gateway_on_rig(tmp_path, {"trust_store": str(trust_path)}, rig, clock) as running,
    ):
        gw = running.gateway
        monitor = gw.monitor
        await running.until(lambda: monitor.pumps[PUMP].polls > 0)
        assert gw.readiness(PUMP).allowed
        await fill_the_disk(gw)
        # Events keep coming until the log's own pages are full too (smaller and smaller ones).
        refusals = [await append_until_refused(gw, extra) for extra in (500, 50, 0)]
        assert all("disk is full" in str(r) for r in refusals)
        accepted_before = gw.events.last_seq
        refused = gw.events.health.refused
        # Something happens at the bedside: an advisory alarm on a running channel.
        rig.pump(PUMP).channel(1).raise_alarm("battery-low")
        await running.until(lambda: gw.events.health.refused > refused)
        health = gw.events.health
        assert health.reason is not None
        assert "disk is full" in health.reason
        assert health.refused >= 2  # ours, and the monitor's alarm event
        ready = gw.readiness(PUMP)
        assert not ready.allowed
        assert any("event log cannot record" in r and "disk is full" in r for r in ready.reasons)
        status = await gw.status_json()
        assert status["auto_programming"]["available"] is False
        assert status["eventlog"]["health"]["ok"] is False
        # Monitoring goes on, and the running infusion was not touched.
        polls = monitor.pumps[PUMP].polls
        await running.until(lambda: monitor.pumps[PUMP].polls > polls + 3)
        pump_channel = rig.pump(PUMP).channel(1)
        assert pump_channel.state == ChannelState.INFUSING
        assert monitor.pumps[PUMP].channels[1].state == ChannelState.INFUSING
        # Space is freed: the next event is written, with a record of what was refused.
        await on_log_thread(gw, "PRAGMA max_page_count = 1073741823")
        pump_channel.clear_alarms()  # battery-low cleared; the channel goes on infusing
        await running.until(lambda: gw.events.health.ok)
        assert gw.readiness(PUMP).allowed
    events = read_events(tmp_path / "state")
    assert events[accepted_before - 1].seq == accepted_before  # nothing accepted before was lost
    recovered = [e for e in events if e.type == "eventlog.write_recovered"]
    assert len(recovered) == 1
    assert recovered[0].payload["refused"] >= 1
    assert "disk is full" in recovered[0].payload["error"]
