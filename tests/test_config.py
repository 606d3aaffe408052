"""The configuration file: validated on start; every problem named with file, key, value, expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pumpgw.gateway.config import (
    AlarisPumpConfig,
    GatewayConfig,
    ModbusRtuPumpConfig,
    ModbusTcpPumpConfig,
    NewEraPumpConfig,
    load_config,
)
from pumpgw.gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "pumpgw.example.toml"


def test_the_documented_example_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.gateway.id == "icu3-bed12"
    assert cfg.mqtt.enabled
    assert cfg.mqtt.tls is not None
    assert [type(p) for p in cfg.pumps] == [
        ModbusTcpPumpConfig,
        NewEraPumpConfig,
        ModbusRtuPumpConfig,
        AlarisPumpConfig,
    ]
    assert cfg.pumps[1].id == "syringe-1"
    assert cfg.library.trust_store == Path("/etc/pumpgw/library-trust.toml")
    assert cfg.library_dir == Path("/var/lib/pumpgw/library")
    assert cfg.library.required is True
    rtu = cfg.pumps[2]
    assert isinstance(rtu, ModbusRtuPumpConfig)
    assert (rtu.parity, rtu.unit_id) == ("E", 2)


def test_a_serial_line_setting_outside_the_standard_rates_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[pumps]]\nid = "a"\ndriver = "alaris"\nport = "/dev/ttyS0"\nbaudrate = 12345\n'
        '[[pumps]]\nid = "b"\ndriver = "modbus-rtu"\nport = "/dev/ttyS0"\nparity = "X"\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    keys = {info.value.key, *(p.key for p in info.value.also)}
    assert keys == {"pumps[0].baudrate", "pumps[1].parity"}


def test_the_systemd_example_loads() -> None:
    cfg = load_config(ROOT / "systemd" / "pumpgw.toml")
    assert cfg.gateway.state_dir == Path("/var/lib/pumpgw")


def test_no_file_at_all_means_defaults() -> None:
    cfg = GatewayConfig()
    assert cfg.pumps == []
    assert cfg.mqtt.enabled is False


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


def test_bad_value_names_file_key_value_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, '[[pumps]]\nid = "p1"\ndriver = "newera"\nport = "/dev/ttyS0"\naddress = 100\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.source == str(path)
    assert err.key == "pumps[0].address"
    assert err.value == 100
    assert "less than or equal to 99" in err.expected
    assert str(path) in str(err)
    assert "pumps[0].address = 100" in str(err)


def test_misspelt_key_is_an_error_not_a_silent_default(tmp_path: Path) -> None:
    path = write(tmp_path, "[gateway]\nid = 'x'\npoll_intervall_s = 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "gateway.poll_intervall_s"
    assert "no such key" in info.value.expected


def test_library_section_keys_are_checked_too(tmp_path: Path) -> None:
    path = write(tmp_path, "[library]\ntrust_store = '/etc/t.toml'\nrequire = false\nrequired = 'maybe'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    keys = {info.value.key, *(p.key for p in info.value.also)}
    assert keys == {"library.require", "library.required"}
    cfg = load_config(write(tmp_path, "[gateway]\nstate_dir = '/srv/gw'\n[library]\nrequired = false\n"))
    assert (cfg.library.trust_store, cfg.library_dir, cfg.library.required) == (
        None,
        Path("/srv/gw/library"),
        False,
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[mqtt]\nport = 0\n[[pumps]]\nid = 'a'\ndriver = 'modbus-tcp'\nhost = 'h'\nunit_id = 300\n"
        "[[pumps]]\nid = 'b'\ndriver = 'telepathy'\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    keys = [info.value.key] + [p.key for p in info.value.also]
    assert keys == ["mqtt.port", "pumps[0].unit_id", "pumps[1]"]
    assert "modbus-tcp, newera" in str(info.value)


def test_duplicate_pump_ids_are_refused(tmp_path: Path) -> None:
    pump = "[[pumps]]\nid = 'a'\ndriver = 'newera'\nport = '/dev/ttyS0'\n"
    with pytest.raises(ConfigError, match="used twice"):
        load_config(write(tmp_path, pump + pump))


def test_tls_cert_without_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt.tls]\nca_file = 'ca.pem'\ncert_file = 'c.pem'\n")
    with pytest.raises(ConfigError, match="cert_file and key_file must be given together"):
        load_config(path)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 2") as info:
        load_config(write(tmp_path, "[gateway]\nid = \n"))
    assert info.value.key == "(syntax)"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a readable file"):
        load_config(tmp_path / "absent.toml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_bytes(b"[gateway]\nid = '\xff'\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


@pytest.mark.parametrize("command", [["run", "--config"], ["config", "check"]])
def test_cli_exits_2_with_the_message(tmp_path: Path, command: list[str]) -> None:
    path = write(tmp_path, "[mqtt]\nport = 'eighteen-eighty-three'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pumpgw.gateway.cli", *command, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: mqtt.port = 'eighteen-eighty-three' is not valid" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_config_check_accepts_the_example() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pumpgw.gateway.cli", "config", "check", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "valid; gateway icu3-bed12, 4 pump(s), MQTT on" in proc.stdout


def test_a_poll_interval_that_would_let_safe_mode_stop_the_pump_is_refused(tmp_path: Path) -> None:
    # Found in review: poll_interval_s = 8 with safe_mode_timeout_s = 3 passed, and the emulated
    # pump stopped its infusion with a comms-timeout alarm.
    path = write(
        tmp_path,
        "[[pumps]]\nid = 'ne'\ndriver = 'newera'\nport = '/dev/ttyS0'\npoll_interval_s = 8\nsafe_mode_timeout_s = 3\n",
    )
    with pytest.raises(ConfigError, match=r"poll_interval_s \+ timeout_s = 9 s must be at most half") as info:
        load_config(path)
    assert info.value.key == "pumps[0]"


def test_run_refuses_a_missing_tls_file_with_exit_2(tmp_path: Path) -> None:
    # Found in review: a missing ca_file surfaced as "mqtt failed: FileNotFoundError" and exit 1.
    path = write(
        tmp_path,
        f"[gateway]\nstate_dir = '{tmp_path}'\n[mqtt]\nenabled = true\n[mqtt.tls]\nca_file = '{tmp_path}/nope.pem'\n",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pumpgw.gateway.cli", "run", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"mqtt.tls.ca_file = '{tmp_path}/nope.pem' is not valid: expected a readable file" in proc.stderr
