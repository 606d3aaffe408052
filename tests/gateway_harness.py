"""Helpers for tests that run the whole gateway against bench-rig pumps: a signed example library
installed in a state directory, the gateway running in a task, and reading back its event log.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pumpgw.gateway.app import Gateway
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.config import parse_config
from pumpgw.gateway.eventlog import EventStore
from pumpgw.gateway.events import Event
from pumpgw.gateway.library import parse_library
from pumpgw.gateway.library_signing import (
    TrustStore,
    VerifiedLibrary,
    generate_key,
    make_trusted_key,
    render_approvals,
    render_trust_store,
    sign,
)
from pumpgw.gateway.library_store import LibraryStore, approvals_path
from pumpgw.rig.bench_rig import BenchRig

EXAMPLE = Path(__file__).resolve().parents[1] / "gateway" / "examples" / "drug-library.example.toml"
KEYS = {"Ann Author": generate_key(), "Rob Reviewer": generate_key()}
PUMP = "rig-modbus-1"


def trust_store() -> TrustStore:
    return TrustStore(
        (
            make_trusted_key("Ann Author", ["author"], KEYS["Ann Author"][1], "test"),
            make_trusted_key("Rob Reviewer", ["reviewer"], KEYS["Rob Reviewer"][1], "test"),
        )
    )


def release(directory: Path, version: int = 7, pump_version: str = "7") -> Path:
    """The example library as ``version``, naming ``pump_version`` for RIG-MC2, signed by both."""
    text = EXAMPLE.read_text()
    text = re.sub(r"(?m)^version = 7$", f"version = {version}", text, count=1)
    text = text.replace('model = "RIG-MC2"\nversion = "7"', f'model = "RIG-MC2"\nversion = "{pump_version}"')
    path = directory / f"library-v{version}.toml"
    path.write_text(text)
    library = parse_library(text.encode(), str(path))
    approvals = sign(library, KEYS["Ann Author"][0], "author", "Ann Author", "2026-11-22T10:00:00Z")
    approvals = sign(
        library, KEYS["Rob Reviewer"][0], "reviewer", "Rob Reviewer", "2026-11-22T11:00:00Z", approvals
    )
    approvals_path(path).write_text(render_approvals(approvals))
    return path


def install(tmp_path: Path, version: int = 7, pump_version: str = "7") -> tuple[Path, VerifiedLibrary]:
    """A trust store file, and the release installed in ``tmp_path/state/library``."""
    trust_path = tmp_path / "trust.toml"
    trust_path.write_text(render_trust_store(trust_store()))
    verified = LibraryStore(tmp_path / "state" / "library").install(
        release(tmp_path, version, pump_version), trust_store()
    )
    return trust_path, verified


def tamper(tmp_path: Path) -> None:
    """Raise a hard limit in the installed library after it was signed and installed."""
    active = tmp_path / "state" / "library" / "active.toml"
    text = active.read_text()
    edited = text.replace('hard_max = "300 ug/h"', 'hard_max = "3000 ug/h"', 1)
    assert edited != text
    active.write_text(edited)


def read_events(state: Path) -> list[Event]:
    store = EventStore(state / "events.sqlite3", "check", FakeClock())
    try:
        assert store.verify() > 0
        return store.read_after(0, limit=10_000)
    finally:
        store.close()


class Running:
    """A gateway running in a task; ``until`` waits for a condition on what the monitor knows."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.changed = asyncio.Event()
        gateway.monitor.add_change_callback(self.changed.set)

    async def until(self, condition: Callable[[], bool], timeout_s: float = 30) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def gateway_on_rig(
    tmp_path: Path,
    library: dict[str, Any],
    rig: BenchRig,
    clock: FakeClock,
    mqtt: dict[str, Any] | None = None,
) -> AsyncIterator[Running]:
    pumps = [dict(p, poll_interval_s=0.1, timeout_s=0.5) for p in rig.endpoints()]
    config = parse_config(
        {
            "gateway": {"id": "gw-test", "state_dir": str(tmp_path / "state")},
            "library": library,
            "mqtt": mqtt or {},
            "pumps": pumps,
        },
        "test",
    )
    gateway = Gateway(config, clock)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    running = Running(gateway)
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def of_type(events: list[Event], type_: str) -> list[Event]:
    return [e for e in events if e.type == type_]
