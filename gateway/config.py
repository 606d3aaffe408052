"""The gateway's configuration: one TOML file, validated on start by pydantic.

A bad file never starts a half-configured gateway: :func:`load_config` raises :class:`ConfigError`
naming the file, the key (as a dotted path such as ``pumps[1].port``), the bad value and what was
expected, for every problem in the file at once. Unknown keys are errors too (a misspelt
``poll_intervall_s`` must not silently fall back to a default).

Secrets (the MQTT password) are never in this file: it names a file that holds them, read when the
connection is made and never logged.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# MQTT topic levels and file names are built from ids: keep them to a safe alphabet.


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Section):
    id: Annotated[str, Field(pattern=_ID_PATTERN)] = "pumpgw"
    state_dir: Path = Path("/var/lib/pumpgw")


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class MqttTls(_Section):
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> MqttTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttSection(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")] = "pumpgw/v1"
    username: str | None = None
    username_file: Path | None = None  # instead of username: a file holding it
    password_file: Path | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    tls: MqttTls | None = None
    # While a backlog drains, up to this many events go in one message (a JSON array), within
    # batch_max_bytes; live events go one per message. 1 turns batching off.
    batch_max_events: Annotated[int, Field(ge=1, le=10_000)] = 200
    batch_max_bytes: Annotated[int, Field(ge=4096, le=16 * 1024 * 1024)] = 256 * 1024

    @model_validator(mode="after")
    def _one_username(self) -> MqttSection:
        if self.username is not None and self.username_file is not None:
            raise ValueError("give username or username_file, not both")
        return self


class EventLogSection(_Section):
    """Retention of the local event log (docs/events.md): events not yet delivered are never deleted."""

    # The log keeps at most this many events, deleting the oldest already delivered; none: keep all.
    max_events: Annotated[int, Field(ge=100)] | None = 2_000_000
    # eventlog.near_capacity is written when the undelivered events reach this share of max_events.
    warn_percent: Annotated[int, Field(ge=1, le=99)] = 80


class LibrarySection(_Section):
    """The drug library: which keys may approve one, and where ``pumpgw library install`` put it."""

    trust_store: Path | None = None  # TOML trust store of the keys allowed to approve libraries
    dir: Path | None = None  # default: <gateway.state_dir>/library
    # Without a verified library pumps are monitored but never auto-programmed, whatever this says;
    # required = false only marks a monitoring-only gateway, where a missing library is not a fault.
    required: bool = True


class _PumpBase(_Section):
    id: Annotated[str, Field(pattern=_ID_PATTERN)]
    poll_interval_s: Annotated[float, Field(ge=0.1, le=60)] = 1.0
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 1.0


class ModbusTcpPumpConfig(_PumpBase):
    driver: Literal["modbus-tcp"]
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    unit_id: Annotated[int, Field(ge=1, le=247)] = 1
    register_map: str = "rig-multichannel-v1"  # a built-in map name, or a path to a TOML file


class ModbusRtuPumpConfig(_PumpBase):
    driver: Literal["modbus-rtu"]
    port: str  # serial device, e.g. /dev/ttyUSB0 (or a pyserial URL); pumps on one line share it
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 19200
    # Modbus over Serial Line v1.02 §2.5.1: even parity is the default; no parity wants 2 stop bits.
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    unit_id: Annotated[int, Field(ge=1, le=247)] = 1
    register_map: str = "rig-multichannel-v1"  # a built-in map name, or a path to a TOML file


class AlarisPumpConfig(_PumpBase):
    driver: Literal["alaris"]
    port: str  # serial device, e.g. /dev/ttyUSB0 (or a pyserial URL)
    # 38400 8N1 per the public drivers (shared/reference/pump-protocols.md §3).
    baudrate: Literal[9600, 19200, 38400, 57600, 115200] = 38400


class NewEraPumpConfig(_PumpBase):
    driver: Literal["newera"]
    port: str  # serial device, e.g. /dev/ttyUSB0 (or a pyserial URL)
    # Baud rates the NE-4000 supports (shared/reference/pump-protocols.md §2.1).
    baudrate: Literal[300, 1200, 2400, 9600, 19200, 38400, 57600, 115200] = 19200
    address: Annotated[int, Field(ge=0, le=99)] = 0
    safe_mode_timeout_s: Annotated[int, Field(ge=1, le=255)] = 10

    @model_validator(mode="after")
    def _polls_keep_safe_mode_alive(self) -> NewEraPumpConfig:
        # In safe mode the pump STOPS THE INFUSION and alarms when no valid packet arrives for
        # safe_mode_timeout_s (pump-protocols.md §2.3); the gateway's polls are its keep-alive.
        # Keep the gap between packets under half the timeout, as NESP's heartbeat does.
        gap = self.poll_interval_s + self.timeout_s
        if gap > self.safe_mode_timeout_s / 2:
            raise ValueError(
                f"poll_interval_s + timeout_s = {gap:g} s must be at most half of "
                f"safe_mode_timeout_s ({self.safe_mode_timeout_s} s), or the pump will stop the "
                "infusion for lack of packets"
            )
        return self


PumpConfig = Annotated[
    ModbusTcpPumpConfig | ModbusRtuPumpConfig | NewEraPumpConfig | AlarisPumpConfig,
    Field(discriminator="driver"),
]


class GatewayConfig(_Section):
    gateway: GatewaySection = GatewaySection()
    log: LogSection = LogSection()
    mqtt: MqttSection = MqttSection()
    eventlog: EventLogSection = EventLogSection()
    library: LibrarySection = LibrarySection()
    pumps: list[PumpConfig] = []

    @property
    def library_dir(self) -> Path:
        """Where the active library lives: ``[library] dir``, or ``<state_dir>/library``."""
        return self.library.dir if self.library.dir is not None else self.gateway.state_dir / "library"

    @field_validator("pumps")
    @classmethod
    def _unique_pump_ids(cls, pumps: list[PumpConfig]) -> list[PumpConfig]:
        seen: set[str] = set()
        for pump in pumps:
            if pump.id in seen:
                raise ValueError(f"pump id {pump.id!r} is used twice")
            seen.add(pump.id)
        return pumps


# Every driver name: pydantic puts the union tag into error locations; it is not a key of ours.
_DRIVER_TAGS = frozenset(
    get_args(cls.model_fields["driver"].annotation)[0]
    for cls in (ModbusTcpPumpConfig, ModbusRtuPumpConfig, NewEraPumpConfig, AlarisPumpConfig)
)


def _dotted(loc: tuple[int | str, ...]) -> str:
    """``('pumps', 1, 'newera', 'port')`` -> ``pumps[1].port`` (the union tag is pydantic's, not ours)."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and isinstance(loc[i - 1], int) and part in _DRIVER_TAGS:
            continue
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _expected(error: Any) -> str:
    msg = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return "no such key (check the spelling; see docs/configuration.md)"
    if error["type"] == "union_tag_invalid":
        return f"one of {', '.join(sorted(_DRIVER_TAGS))}"
    return msg[0].lower() + msg[1:] if msg else "a valid value"


def parse_config(data: dict[str, Any], source: str) -> GatewayConfig:
    """Validate already-parsed TOML data. Raises ConfigError listing every problem."""
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems = [
            ConfigError(source, _dotted(tuple(e["loc"])), e.get("input"), _expected(e)) for e in exc.errors()
        ]
        first = ConfigError(
            source, problems[0].key, problems[0].value, problems[0].expected, tuple(problems[1:])
        )
        raise first from None


def load_config(path: Path) -> GatewayConfig:
    """Read and validate the TOML file at ``path``.

    Raises ConfigError if the file cannot be read, is not TOML, or has any invalid key or value.
    """
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, "(file)", source, f"a readable file ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "(file)", raw[exc.start : exc.end], "UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(syntax)", str(exc), "valid TOML") from None
    return parse_config(data, source)


def check_files(config: GatewayConfig, source: str) -> None:
    """Check that the files the configuration names can be read, before anything starts.

    Separate from :func:`load_config` so a file can be checked on another machine than the box it
    is for. Raises ConfigError naming the key and the file.
    """
    files: list[tuple[str, Path | None]] = []
    if config.mqtt.enabled:
        files.append(("mqtt.username_file", config.mqtt.username_file))
        files.append(("mqtt.password_file", config.mqtt.password_file))
        if config.mqtt.tls is not None:
            files += [
                ("mqtt.tls.ca_file", config.mqtt.tls.ca_file),
                ("mqtt.tls.cert_file", config.mqtt.tls.cert_file),
                ("mqtt.tls.key_file", config.mqtt.tls.key_file),
            ]
    for key, path in files:
        if path is None:
            continue
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(source, key, str(path), f"a readable file ({exc.strerror})") from None
