"""The systemd unit passes systemd-analyze verify and runs what the README says it runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "pumpgw.service"


def test_unit_verifies_with_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # Point ExecStart at this checkout's pumpgw so that verify can check it is executable.
    pumpgw = Path(sys.executable).with_name("pumpgw")
    text = UNIT.read_text().replace("/opt/pumpgw/venv/bin/pumpgw", str(pumpgw))
    unit = tmp_path / "pumpgw.service"
    unit.write_text(text)
    proc = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "pumpgw.service" not in proc.stderr, proc.stderr


def test_unit_runs_the_gateway_with_the_shipped_config_as_a_dedicated_user() -> None:
    lines = dict(
        line.split("=", 1)
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert lines["ExecStart"].endswith("pumpgw --log-format json run --config /etc/pumpgw/pumpgw.toml")
    assert lines["User"] == "pumpgw"
    assert lines["StateDirectory"] == "pumpgw"
    assert "PYTHONSAFEPATH=1" in lines["Environment"]
    assert lines["RestartPreventExitStatus"] == "2"
