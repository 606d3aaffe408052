"""The monitor turns polls into change events; the view renders what the monitor knows."""

from __future__ import annotations

import io
import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pumpgw.drivers.base import ChannelState, ChannelStatus, PumpIdentity
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import LinkLost, NoResponse
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.library import parse_library
from pumpgw.gateway.library_fitness import LibraryState
from pumpgw.gateway.library_signing import VerifiedLibrary
from pumpgw.gateway.logs import setup_logging
from pumpgw.gateway.monitor import STATUS_REFRESH_S, BedsideMonitor
from pumpgw.gateway.quantity import Quantity
from pumpgw.gateway.view import library_line, render

EXAMPLE_LIBRARY = Path(__file__).resolve().parents[1] / "gateway" / "examples" / "drug-library.example.toml"


def ch(state: ChannelState, alarms: tuple[str, ...] = (), ml: str = "1.5") -> ChannelStatus:
    return ChannelStatus(
        1, state, rate=Quantity.of("5", "mL/h"), vtbi=Quantity.of("48.5", "mL"),
        volume_infused=Quantity(Decimal(ml), "mL"), drug="Morphine",
        concentration=Quantity.of("1", "mg/mL"), alarms=alarms,
    )  # fmt: skip


async def test_changes_become_events_and_polls_do_not(eventlog: EventLog) -> None:
    clock = FakeClock()
    published: list[tuple[str, dict[str, Any]]] = []
    monitor = BedsideMonitor(
        eventlog, {"p1": "modbus-tcp"}, clock, publish=lambda p, s: published.append((p, s))
    )
    await monitor.on_identity("p1", PumpIdentity("modbus-tcp", "Acme", "M", "SN", "1", "7", 1))
    await monitor.on_link("p1", True, None)
    await monitor.on_status("p1", (ch(ChannelState.INFUSING),), 1.0)
    await monitor.on_status("p1", (ch(ChannelState.INFUSING, ml="1.6"),), 2.0)  # only volume moved
    await monitor.on_status("p1", (ch(ChannelState.ALARM, ("occlusion-down",)),), 3.0)
    await monitor.on_status("p1", (ch(ChannelState.PAUSED),), 4.0)
    await monitor.on_link("p1", False, LinkLost("p1", 3, NoResponse("p1", "read", 1.0)))
    await monitor.on_link("p1", True, None)
    events = await eventlog.read_after(0)
    assert [(e.type, e.payload.get("to") or e.payload.get("alarm")) for e in events] == [
        ("pump.identified", None),
        ("channel.state_changed", "infusing"),
        ("channel.state_changed", "alarm"),
        ("channel.alarm_raised", "occlusion-down"),
        ("channel.state_changed", "paused"),
        ("infusion.paused", None),
        ("channel.alarm_cleared", "occlusion-down"),
        ("pump.link_lost", None),
        ("pump.link_restored", None),
    ]
    assert events[1].payload == {
        "from": None,
        "to": "infusing",
        "rate_ml_h": "5",
        "volume_infused_ml": "1.5",
        "drug": "Morphine",
    }
    assert "3 consecutive failures" in events[7].payload["error"]
    # The volume-only poll did not republish the retained status (it refreshes every 10 s).
    statuses = [s for p, s in published]
    assert len(statuses) == 7
    assert statuses[-1]["link"] == "up"
    assert statuses[-1]["channels"][0]["concentration"] == "1 mg/mL"


async def test_retained_status_refreshes_while_only_volume_moves(eventlog: EventLog) -> None:
    clock = FakeClock()
    published: list[str] = []
    monitor = BedsideMonitor(eventlog, {"p1": "x"}, clock, publish=lambda p, s: published.append(p))
    await monitor.on_status("p1", (ch(ChannelState.INFUSING),), 0.0)
    clock.advance(STATUS_REFRESH_S - 1)
    await monitor.on_status("p1", (ch(ChannelState.INFUSING, ml="1.6"),), 1.0)
    clock.advance(1)
    await monitor.on_status("p1", (ch(ChannelState.INFUSING, ml="1.7"),), 2.0)
    assert published == ["p1", "p1"]


async def test_render_shows_every_channel_and_lost_links(eventlog: EventLog) -> None:
    monitor = BedsideMonitor(eventlog, {"p1": "modbus-tcp", "p2": "newera"}, FakeClock())
    await monitor.on_status("p1", (ch(ChannelState.INFUSING, ("air-in-line",)),), 1.0)
    await monitor.on_link("p2", False, LinkLost("p2", 3, NoResponse("p2", "read", 1.0)))
    text = render(list(monitor.pumps.values()), "HEADER", "FOOTER")
    lines = text.splitlines()
    assert lines[0] == "HEADER"
    assert lines[-1] == "FOOTER"
    row = lines[2].split()
    assert row[:4] == ["p1", "connecting", "1", "infusing"]
    assert "Morphine" in lines[2]
    assert "1 mg/mL" in lines[2]
    assert "air-in-line" in lines[2]
    assert lines[3].startswith("p2")
    assert "LOST" in lines[3]
    assert "no answer within 1 s" in lines[3]


@pytest.mark.hazard("HAZ-003")
async def test_status_and_view_show_each_pumps_library_and_the_gateways(eventlog: EventLog) -> None:
    library = parse_library(EXAMPLE_LIBRARY.read_bytes(), str(EXAMPLE_LIBRARY))
    monitor = BedsideMonitor(eventlog, {"p1": "modbus-tcp", "p2": "newera", "p3": "x"}, FakeClock())
    assert "NONE - auto-programming unavailable" in library_line(monitor.library)
    await monitor.set_library(LibraryState(VerifiedLibrary(library, "A. Author", "R. Reviewer", "k1", "k2")))
    await monitor.on_identity("p1", PumpIdentity("modbus-tcp", "Acme", "RIG-MC2", "SN", "1", "6", 2))
    await monitor.on_identity("p2", PumpIdentity("newera", "New Era", "NE-1000", None, "3", None, 1))
    await monitor.on_status("p1", (ch(ChannelState.INFUSING), ChannelStatus(2, ChannelState.IDLE)), 1.0)
    status = monitor.status_json("p1")["library"]
    assert (status["fit"], status["code"], status["reported"], status["expected"]) == (
        False, "library-outdated", "6", "7",
    )  # fmt: skip
    assert monitor.status_json("p2")["library"]["code"] == "pump-reports-no-library"
    assert monitor.status_json("p3")["library"]["code"] == "pump-not-identified"
    text = render(list(monitor.pumps.values()), library_line(monitor.library))
    lines = text.splitlines()
    assert lines[0].startswith(f"drug library: {library.label} - EXAMPLE")
    assert lines[1].split()[-1] == "LIBRARY"
    assert lines[2].endswith("OUTDATED v6, expected v7")  # the pump's first channel row
    assert lines[3].split()[:3] == ["p1", "connecting", "2"]
    assert "OUTDATED" not in lines[3]
    assert lines[4].endswith("not reported by pump")


@pytest.fixture
def restore_root_logger() -> Any:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_json_logs_carry_extra_fields_as_keys() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    logging.getLogger("pumpgw.test").warning("pump poll failed", extra={"pump": "p1", "error": "x"})
    record = json.loads(stream.getvalue())
    assert record["message"] == "pump poll failed"
    assert record["pump"] == "p1"
    assert record["level"] == "warning"
    assert record["time"].endswith("+00:00")
    setup_logging("info", "text", stream)
    logging.getLogger("pumpgw.test").info("hello", extra={"pump": "p2"})
    assert stream.getvalue().splitlines()[-1].endswith("pumpgw.test: hello [pump=p2]")
