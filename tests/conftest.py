"""Shared test fixtures and the CI rule that a skipped test is a failed test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.eventlog import EventLog


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if os.environ.get("CI") and skipped:
        terminalreporter.write_line(
            f"CI: {len(skipped)} test(s) skipped; in CI every test must run (install what they need "
            "in .ci/run)",
            red=True,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if os.environ.get("CI") and skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def require_mosquitto() -> str:
    """The mosquitto binary; a test that needs it skips locally, and a skip fails CI."""
    from pumpgw.gateway.broker import find_mosquitto

    path = find_mosquitto()
    if path is None:
        pytest.skip("mosquitto is not installed (scripts/bootstrap installs it)")
    return path


@pytest.fixture
async def eventlog(tmp_path: Path) -> AsyncIterator[EventLog]:
    """An open event log (gateway id ``gw-test``) with its group-commit writer running."""
    log = EventLog(tmp_path / "events.sqlite3", "gw-test", FakeClock())
    ready = asyncio.Event()
    writer = asyncio.create_task(log.run(ready))
    await ready.wait()
    yield log
    writer.cancel()
    await asyncio.wait({writer})
    await log.close()
