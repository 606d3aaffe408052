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


# --- [hl7], [fhir], [epr] ------------------------------------------------------------------------


def test_hospital_sections_default_off() -> None:
    cfg = GatewayConfig()
    assert cfg.hl7.enabled is False
    assert cfg.fhir.enabled is False
    assert (cfg.epr.hl7, cfg.epr.fhir) == ([], [])
    assert cfg.hl7.stale_after_min == 15


def test_hospital_sections_load_with_every_key_checked(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            "[hl7]\nenabled = true\nlisten_port = 2575\norder_programmer_host = 'emar.example'\n"
            "order_programmer_port = 2576\nstale_after_min = 10\n"
            "[fhir]\nenabled = true\nbase_url = 'https://emar.example/fhir'\nmrn_system = 'urn:oid:1.2.3'\n"
            "[fhir.auth]\ntoken_file = '/etc/pumpgw/emar-token'\n"
            "[[epr.hl7]]\nname = 'engine'\nhost = 'engine.example'\nport = 6661\nmessages = ['ipec', 'ras']\n"
            "ipec_stop_code = 197289\n"
            "[[epr.fhir]]\nname = 'epr'\nbase_url = 'https://epr.example/fhir'\n",
        )
    )
    assert (cfg.hl7.order_programmer_host, cfg.hl7.order_programmer_port) == ("emar.example", 2576)
    assert cfg.fhir.auth is not None
    assert cfg.fhir.auth.token_file == Path("/etc/pumpgw/emar-token")
    assert cfg.epr.hl7[0].messages == ["ipec", "ras"]
    assert cfg.epr.fhir[0].name == "epr"


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("[hl7]\norder_programmer_host = 'h'\n", "hl7", "given together"),
        ("[hl7]\nstale_after_min = 0\n", "hl7.stale_after_min", "greater than or equal to 1"),
        ("[hl7.tls]\nca_file = 'ca.pem'\n", "hl7", "needs cert_file and key_file"),
        ("[fhir]\nbase_url = 'ftp://x'\n", "fhir.base_url", "match pattern"),
        ("[fhir.auth]\ntoken_file = 't'\nsmart_client_id = 'c'\n", "fhir.auth", "not both"),
        ("[fhir.auth]\nsmart_client_id = 'c'\n", "fhir.auth", "needs smart_token_url"),
        ("[[epr.hl7]]\nname = 'e'\nhost = 'h'\nport = 1\nmessages = ['fax']\n", "epr.hl7[0].messages[0]", "ipec"),
        ("[[epr.hl7]]\nname = 'e'\nhost = 'h'\nport = 1\nipec_stop_code = 5\n", "epr.hl7[0].ipec_stop_code", "196608"),
        ("[[epr.hl7]]\nname = 'a'\nhost = 'h'\nport = 1\n[[epr.fhir]]\nname = 'a'\nbase_url = 'http://x'\n",
         "epr", "used twice"),
        ("[[epr.fhir]]\nname = 'mqtt'\nbase_url = 'http://x'\n", "epr", "MQTT outbox"),
    ],
)  # fmt: skip
def test_hospital_section_mistakes_name_the_key(tmp_path: Path, text: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key, str(info.value)
    assert expected in str(info.value)


def test_files_named_by_the_hospital_sections_are_checked_before_start(tmp_path: Path) -> None:
    from pumpgw.gateway.config import check_files

    cfg = load_config(
        write(
            tmp_path,
            f"[[epr.fhir]]\nname = 'epr'\nbase_url = 'https://x'\n[epr.fhir.auth]\ntoken_file = '{tmp_path}/t'\n",
        )
    )
    with pytest.raises(ConfigError) as info:
        check_files(cfg, "gw.toml")
    assert info.value.key == "epr.fhir[0].auth.token_file"


def test_the_rig_writes_a_valid_config_for_its_hospital(tmp_path: Path) -> None:
    """`pumpgw rig up` writes [hl7], [fhir] and [[epr.*]] for its eMAR and EPR (rig/hospital.py)."""
    from pumpgw.gateway.rig_cli import gateway_config

    hospital = {
        "emar": {"fhir_base": "http://127.0.0.1:1/fhir", "mrn_system": "urn:pumpgw:rig:mrn",
                 "rrg_host": "127.0.0.1", "rrg_port": 2, "gateway_piv": "127.0.0.1:3"},
        "epr": {"fhir_base": "http://127.0.0.1:4/fhir", "mllp_host": "127.0.0.1", "mllp_port": 5},
    }  # fmt: skip
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_config([], tmp_path / "state", hospital))
    cfg = load_config(path)
    assert (cfg.hl7.enabled, cfg.hl7.listen_port, cfg.hl7.order_programmer_port) == (True, 3, 2)
    assert cfg.fhir.mrn_system == "urn:pumpgw:rig:mrn"
    assert [(r.name, r.port, r.messages) for r in cfg.epr.hl7] == [("rig-epr-hl7", 5, ["ipec", "acm", "ras"])]
    assert [r.base_url for r in cfg.epr.fhir] == ["http://127.0.0.1:4/fhir"]
    without = tmp_path / "plain.toml"
    without.write_text(gateway_config([], tmp_path / "state"))
    assert load_config(without).hl7.enabled is False
