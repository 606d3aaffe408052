"""The running rig's control socket, and `pumpgw rig` commands that talk to it (real Unix socket)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from pumpgw.drivers.newera import NewEraDriver
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import NoResponse
from pumpgw.rig.bench_rig import OLD_LIBRARY_VERSION, BenchRig
from pumpgw.rig.control import SOCKET_NAME, RigControlServer, ask


async def test_faults_set_and_cleared_through_the_socket_reach_the_pump(tmp_path: Path) -> None:
    clock = FakeClock()
    async with (
        BenchRig(clock, modbus_pumps=1, newera_pumps=1) as rig,
        RigControlServer(rig, tmp_path / SOCKET_NAME) as control,
    ):
        assert (control.path.stat().st_mode & 0o777) == 0o600
        endpoint = next(p for p in rig.endpoints() if p["driver"] == "newera")
        driver = NewEraDriver("t", endpoint["port"], timeout_s=0.2)
        await driver.connect()
        try:
            answer = await ask(control.path, {"op": "fault", "pump": "rig-newera-1", "kind": "no-answer"})
            assert answer["ok"], answer
            assert "until cleared" in answer["detail"]
            with pytest.raises(NoResponse):
                await driver.read_status()
            status = await ask(control.path, {"op": "status"})
            newera = next(p for p in status["pumps"] if p["id"] == "rig-newera-1")
            assert newera["faults"] == [{"kind": "no-answer", "count": None, "seconds": None}]
            assert (await ask(control.path, {"op": "clear", "pump": "rig-newera-1"}))["ok"]
            (channel,) = await driver.read_status()  # recovered
            assert channel.rate is not None
        finally:
            await driver.close()


async def test_pump_faults_old_library_and_device_alarm(tmp_path: Path) -> None:
    clock = FakeClock()
    async with BenchRig(clock, modbus_pumps=1, newera_pumps=0) as rig:
        rig.set_fault("rig-modbus-1", "old-library")
        from pumpgw.drivers.modbus import ModbusTcpDriver

        ep = rig.endpoints()[0]
        driver = ModbusTcpDriver("t", ep["host"], ep["port"])
        try:
            identity = await driver.identify()
            assert identity.library_version == str(OLD_LIBRARY_VERSION)
            rig.set_fault("rig-modbus-1", "occlusion-downstream", channel=2)
            first, second = await driver.read_status()
            assert "occlusion-downstream" in second.alarms
            assert second.state.value == "alarm"
            assert first.alarms == ()
            rig.set_fault("rig-modbus-1", "battery-low", channel=1)
            first, _ = await driver.read_status()
            assert "battery-low" in first.alarms
            assert first.battery_percent == 15
            assert first.state.value == "infusing"  # an advisory: delivery goes on
            rig.clear_faults("rig-modbus-1")
            assert (await driver.identify()).library_version != str(OLD_LIBRARY_VERSION)
            first, second = await driver.read_status()
            assert (first.alarms, second.alarms, first.battery_percent) == ((), (), 100)
            assert second.state.value == "paused"  # never restarts by itself after an alarm
        finally:
            await driver.close()


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"op": "fault", "pump": "nope", "kind": "no-answer"}, "no pump 'nope'"),
        ({"op": "fault", "pump": "rig-modbus-1", "kind": "explode"}, "unknown fault 'explode'"),
        ({"op": "fault", "pump": "rig-modbus-1", "kind": "corrupt-checksum"}, "no checksum"),
        ({"op": "fault", "pump": "rig-modbus-1", "kind": "disconnect"}, "needs a duration"),
        ({"op": "fault", "pump": "rig-modbus-1", "kind": "delay", "count": "x"}, "count must be"),
        ({"op": "record", "pump": "rig-modbus-1", "path": "relative.jsonl"}, "must be absolute"),
        ({"op": "dance"}, "unknown op"),
        ({"op": "fault", "pump": "rig-newera-1", "kind": "old-library"}, "reports no drug library"),
        ({"op": "fault", "pump": "rig-newera-1", "kind": "air-in-line"}, "cannot report"),
    ],
)
async def test_bad_requests_are_answered_with_the_reason_and_the_rig_stays_up(
    tmp_path: Path, request_: dict[str, object], error: str
) -> None:
    async with (
        BenchRig(FakeClock(), modbus_pumps=1, newera_pumps=1) as rig,
        RigControlServer(rig, tmp_path / SOCKET_NAME) as control,
    ):
        answer = await ask(control.path, request_)
        assert not answer["ok"]
        assert error in answer["error"]
        assert (await ask(control.path, {"op": "status"}))["ok"]
    assert control.handle_line(b"{not json")["ok"] is False


async def test_rig_up_and_fault_commands_end_to_end(tmp_path: Path) -> None:
    """`pumpgw rig up` in its own process; `pumpgw rig fault` and `status` from another."""
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pumpgw.gateway.cli", "rig", "up", "--json", "--dir", str(tmp_path),
        "--modbus-tcp", "1", "--newera", "1", "--modbus-rtu", "0", "--alaris", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        line = await asyncio.wait_for(up.stdout.readline(), 20)
        started = json.loads(line)
        assert [p["id"] for p in started["pumps"]] == ["rig-modbus-1", "rig-newera-1"]
        config = await asyncio.to_thread(Path(started["config"]).read_text)
        assert 'driver = "newera"' in config
        import tomllib

        from pumpgw.gateway.config import parse_config

        parsed = parse_config(tomllib.loads(config), started["config"])
        assert [p.id for p in parsed.pumps] == ["rig-modbus-1", "rig-newera-1"]

        async def pumpgw(*args: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pumpgw.gateway.cli", "rig", *args, "--dir", str(tmp_path),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()

        code, out, _ = await pumpgw("fault", "rig-newera-1", "garbage", "--count", "2")
        assert code == 0
        assert "garbage" in out
        code, out, _ = await pumpgw("status")
        assert code == 0
        assert "rig-newera-1" in out
        assert "garbage" in out
        code, _, err = await pumpgw("fault", "rig-newera-9", "garbage")
        assert code == 2
        assert "no pump 'rig-newera-9'" in err
    finally:
        up.terminate()
        await asyncio.wait_for(up.wait(), 20)
    assert up.returncode == 0
    assert not (tmp_path / SOCKET_NAME).exists()


def test_fault_without_a_running_rig_says_how_to_start_one(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pumpgw.gateway.cli import main

    result = CliRunner().invoke(main, ["rig", "fault", "p", "no-answer", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "pumpgw rig up" in result.output
