"""Record and replay on real links: a shipped recording replayed against the driver, a changed
driver caught at the first differing byte, and `pumpgw rig record` / `replay` end to end.

The shipped recording (``tests/fixtures/recordings/newera-session.jsonl``) is a New Era session
recorded from the rig's emulated pump (there is no real pump on this bench): connect (safe mode,
with the power-up alarm acknowledged), identify, two status reads 18 s apart. Regenerate it with
``python tests/test_replay.py`` after a deliberate change to the driver or the emulator; the test
``test_the_shipped_recording_is_what_the_emulator_says_today`` fails until then.
"""

from __future__ import annotations

import asyncio
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pumpgw.drivers.base import ChannelState
from pumpgw.gateway.app import make_driver
from pumpgw.gateway.clock import FakeClock, SystemClock
from pumpgw.gateway.config import parse_config
from pumpgw.gateway.errors import NoResponse
from pumpgw.gateway.quantity import Quantity
from pumpgw.rig.bench_rig import BenchRig
from pumpgw.rig.recording import Replayer, exchanges, load_recording
from pumpgw.rig.replay import serve_replay

FIXTURE = Path(__file__).parent / "fixtures" / "recordings" / "newera-session.jsonl"


def _driver(endpoint: dict[str, Any], **extra: Any):  # type: ignore[no-untyped-def]
    entry = {**endpoint, "timeout_s": 0.3, "safe_mode_timeout_s": 30, **extra}
    return make_driver(parse_config({"gateway": {"id": "t"}, "pumps": [entry]}, "test").pumps[0])


async def _session(endpoint: dict[str, Any], clock: FakeClock | None) -> list[Any]:
    """The session the fixture holds: what a gateway does first with a New Era pump."""
    driver = _driver(endpoint)
    await driver.connect()
    try:
        identity = await driver.identify()
        first = await driver.read_status()
        if clock is not None:
            clock.advance(18)
        second = await driver.read_status()
    finally:
        await driver.close()
    return [identity, first, second]


async def record_fixture(path: Path) -> None:
    clock = FakeClock()
    async with BenchRig(clock, modbus_pumps=0, newera_pumps=1) as rig:
        (pump,) = rig.pumps
        rig.start_recording(pump.id, path)
        await _session(pump.endpoint, clock)
        rig.stop_recording(pump.id)


async def test_the_shipped_recording_replays_against_the_driver() -> None:
    replayer = Replayer(load_recording(FIXTURE))
    async with serve_replay(replayer, SystemClock()) as endpoint:
        assert endpoint["driver"] == "newera"
        identity, (first,), (second,) = await _session(endpoint, None)
    assert replayer.divergence is None, replayer.divergence
    assert replayer.finished
    assert identity.model.startswith("NE")
    assert first.state is ChannelState.INFUSING
    assert first.rate == Quantity(Decimal("20"), "mL/h")
    assert first.volume_infused is not None
    assert second.volume_infused is not None
    assert second.volume_infused.value - first.volume_infused.value == Decimal("0.1")  # 18 s at 20 mL/h


async def test_the_shipped_recording_is_what_the_emulator_says_today(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.jsonl"
    await record_fixture(fresh)
    assert exchanges(load_recording(fresh).chunks) == exchanges(load_recording(FIXTURE).chunks)


async def test_a_driver_that_sends_something_else_is_caught_at_the_first_difference() -> None:
    replayer = Replayer(load_recording(FIXTURE))
    async with serve_replay(replayer, SystemClock()) as endpoint:
        driver = _driver(endpoint, safe_mode_timeout_s=20)  # SAF20 instead of the recorded SAF30
        with pytest.raises(NoResponse):
            await driver.connect()
        await driver.close()
    assert replayer.divergence is not None
    assert replayer.divergence.exchange == 1
    assert b"SAF30" in replayer.divergence.expected
    assert b"SAF20" in replayer.divergence.received


async def _pumpgw(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pumpgw.gateway.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_rig_record_then_rig_replay_end_to_end(tmp_path: Path) -> None:
    """Record a live pump with `pumpgw rig record`, replay the file with `pumpgw rig replay`."""
    up = await _pumpgw("rig", "up", "--json", "--dir", str(tmp_path), "--modbus-tcp", "0",
                       "--modbus-rtu", "0", "--alaris", "0", "--newera", "1")  # fmt: skip
    recording = tmp_path / "live.jsonl"
    try:
        assert up.stdout is not None
        (endpoint,) = json.loads(await asyncio.wait_for(up.stdout.readline(), 20))["pumps"]
        rec = await _pumpgw("rig", "record", endpoint["id"], str(recording), "--dir", str(tmp_path))
        out, _ = await asyncio.wait_for(rec.communicate(), 20)
        assert rec.returncode == 0, out
        await _session(endpoint, None)
        stop = await _pumpgw("rig", "record", endpoint["id"], "--stop", "--dir", str(tmp_path))
        out, _ = await asyncio.wait_for(stop.communicate(), 20)
        assert b"recording stopped" in out
    finally:
        up.terminate()
        await asyncio.wait_for(up.wait(), 20)
    assert len(exchanges(load_recording(recording).chunks)) >= 4

    replay = await _pumpgw("rig", "replay", str(recording), "--json")
    try:
        assert replay.stdout is not None
        (endpoint,) = json.loads(await asyncio.wait_for(replay.stdout.readline(), 20))["pumps"]
        # A live pump moves between two reads; the replay gives back exactly what it said then.
        await _session(endpoint, None)
    finally:
        replay.terminate()
        _, err = await asyncio.wait_for(replay.communicate(), 20)
    assert replay.returncode == 0, err
    assert b"replay complete" in err


if __name__ == "__main__":  # regenerate the fixture (see the module docstring)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(record_fixture(FIXTURE))
    print(f"wrote {FIXTURE}")
