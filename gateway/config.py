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


_APP_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
_HOST_PATTERN = r"^[A-Za-z0-9.:_-]{1,253}$"


class TlsFiles(_Section):
    """TLS for an HL7 (MLLP) or FHIR link. As a client: ``ca_file`` (the peer's CA; none = the
    system's), ``cert_file``/``key_file`` for a client certificate. As the PIV listener:
    ``cert_file``/``key_file`` are the server's, ``ca_file`` (if given) requires client certificates
    issued by it."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsFiles:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class Hl7Section(_Section):
    """PIV orders in (RGV^O15 over MLLP) and the RRG^O16 answers to the order programmer."""

    enabled: bool = False
    listen_host: Annotated[str, Field(pattern=_HOST_PATTERN)] = "127.0.0.1"
    listen_port: Annotated[int, Field(ge=0, le=65535)] = 2575  # 0: a free port the OS picks
    # Where RRG^O16 goes (the order programmer's listener); none = no application acknowledgement
    # is sent (the ACK^O15 still is), which an order programmer in enhanced mode will time out on.
    order_programmer_host: Annotated[str, Field(pattern=_HOST_PATTERN)] | None = None
    order_programmer_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    application: Annotated[str, Field(pattern=_APP_PATTERN)] = "PUMPGW"
    facility: Annotated[str, Field(pattern=_APP_PATTERN)] | None = None
    # Refuse an RGV^O15 whose MSH-21 lacks an accepted PIV profile OID (the IHE examples carry none).
    require_profile_oid: bool = False
    # The MSH-21 OIDs taken as PCD-03 PIV (the IHE PCD one; add what your order programmer sends).
    accepted_profile_oids: list[Annotated[str, Field(pattern=r"^[0-2](\.(0|[1-9][0-9]*))+$")]] = [
        "1.3.6.1.4.1.19376.1.6.1.3.1"
    ]
    # Orders made (ORC-9) longer ago than this are refused as stale (PIV error 9022).
    stale_after_min: Annotated[int, Field(ge=1, le=1440)] = 15
    max_message_bytes: Annotated[int, Field(ge=4096, le=16 * 1024 * 1024)] = 1024 * 1024
    read_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    idle_timeout_s: Annotated[float, Field(gt=0, le=86400)] = 600.0
    max_connections: Annotated[int, Field(ge=1, le=1024)] = 32
    reply_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    tls: TlsFiles | None = None  # as the listener; the same files are used to reach the programmer

    @model_validator(mode="after")
    def _programmer_host_and_port(self) -> Hl7Section:
        if (self.order_programmer_host is None) != (self.order_programmer_port is None):
            raise ValueError("order_programmer_host and order_programmer_port must be given together")
        if self.tls is not None and self.tls.cert_file is None:
            raise ValueError("tls for the PIV listener needs cert_file and key_file (the server's)")
        return self


class FhirAuthSection(_Section):
    """How the gateway authenticates to a FHIR server: a bearer token read from a file, or SMART
    backend services (client credentials with a signed JWT)."""

    token_file: Path | None = None
    smart_token_url: str | None = None
    smart_client_id: str | None = None
    smart_key_file: Path | None = None
    smart_key_id: str | None = None
    smart_scope: str = "system/MedicationRequest.read system/MedicationAdministration.write"

    @model_validator(mode="after")
    def _one_method(self) -> FhirAuthSection:
        smart = [self.smart_token_url, self.smart_client_id, self.smart_key_file, self.smart_key_id]
        if self.token_file is not None and any(v is not None for v in smart):
            raise ValueError("give token_file or the smart_* keys, not both")
        if any(v is not None for v in smart) and not all(v is not None for v in smart):
            raise ValueError("SMART backend services needs smart_token_url, smart_client_id, "
                             "smart_key_file and smart_key_id")  # fmt: skip
        return self


class FhirSection(_Section):
    """Orders over FHIR R4: the eMAR's server, asked for MedicationRequests on the patient scan."""

    enabled: bool = False
    base_url: Annotated[str, Field(pattern=r"^https?://")] = "http://127.0.0.1:8080/fhir"
    # The identifier system of the numbers on the wristbands (Patient.identifier.system), if the
    # eMAR's patients carry one; without it the wristband number is searched in any system.
    mrn_system: str | None = None
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    auth: FhirAuthSection | None = None
    tls: TlsFiles | None = None


class EprHl7Receiver(_Section):
    """An EPR (or interface engine) that takes IHE PCD messages over MLLP."""

    name: Annotated[str, Field(pattern=_ID_PATTERN)]
    host: Annotated[str, Field(pattern=_HOST_PATTERN)]
    port: Annotated[int, Field(ge=1, le=65535)]
    # Which messages it wants: ipec (PCD-10 ORU^R42), acm (PCD-04 ORU^R40), dec (PCD-01 ORU^R01),
    # ras (RAS^O17 administrations).
    messages: list[Literal["ipec", "acm", "dec", "ras"]] = ["ipec", "acm"]
    application: Annotated[str, Field(pattern=_APP_PATTERN)] | None = None
    facility: Annotated[str, Field(pattern=_APP_PATTERN)] | None = None
    reply_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    # PID-3.4: the assigning authority of the patient ids on the wristbands, if the EPR wants it.
    patient_id_authority: Annotated[str, Field(pattern=_APP_PATTERN)] | None = None
    # The MDC codes of MDC_EVT_PUMP_DELIV_STOP and _COMP (from the IEEE 11073 term server) when
    # the receiver needs numbers; without them the events are sent by reference id.
    ipec_stop_code: Annotated[int, Field(ge=196608, le=262143)] | None = None
    ipec_complete_code: Annotated[int, Field(ge=196608, le=262143)] | None = None
    tls: TlsFiles | None = None


class EprFhirReceiver(_Section):
    """An EPR that takes MedicationAdministration (and the pump as a Device) over FHIR R4."""

    name: Annotated[str, Field(pattern=_ID_PATTERN)]
    base_url: Annotated[str, Field(pattern=r"^https?://")]
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    auth: FhirAuthSection | None = None
    tls: TlsFiles | None = None


class EprSection(_Section):
    """Where administrations are documented. Each receiver has its own outbox (docs/events.md)."""

    hl7: list[EprHl7Receiver] = []
    fhir: list[EprFhirReceiver] = []

    @model_validator(mode="after")
    def _unique_names(self) -> EprSection:
        names = [r.name for r in self.hl7] + [r.name for r in self.fhir]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"receiver name {doubled[0]!r} is used twice (each names an outbox)")
        if "mqtt" in names:
            raise ValueError("'mqtt' is the MQTT outbox's name; give this receiver another")
        return self


class ScanPumpLabel(_Section):
    """One pump (or pump channel) asset label, ``[[scanning.pump_labels]]``: the GS1 GIAI (AI 8004)
    printed on it, and the configured pump (``[[pumps]] id``) and channel it stands for."""

    # GIAI: up to 30 characters of GS1 character set 82 (GS1 syntax dictionary, AI 8004 X..30).
    giai: Annotated[str, Field(pattern=r"^[!\"%-?A-Z_a-z]{1,30}$")]
    pump: Annotated[str, Field(pattern=_ID_PATTERN)]
    channel: Annotated[int, Field(ge=1, le=99)] | None = None  # none: the label names the whole pump


class ScanningSection(_Section):
    """How bedside scans are read (``gateway/scan.py``; docs/scanning.md)."""

    # Characters that end a variable-length GS1 field besides GS (0x1D), which always does: the
    # substitute a keyboard-wedge scanner is set to send for FNC1/GS, e.g. ["|"].
    separator_chars: list[str] = ["\x1d"]
    # A pharmacy-prepared infusion's label (a plain Code 128, QR or DataMatrix, not GS1): a regular
    # expression matched against the whole scan, with named groups order, dispense and patient.
    label_pattern: str = r"^RX-(?P<order>[A-Za-z0-9._-]{1,40})$"
    # Which wristband field is the patient id orders name: the GSRN (AI 8018), or an internal AI
    # (90-99) holding the hospital number, e.g. "ai:91" (NHS DCB1077 bands).
    patient_id_from: Annotated[str, Field(pattern=r"^(gsrn|ai:9[0-9])$")] = "gsrn"
    pump_labels: list[ScanPumpLabel] = []

    @field_validator("separator_chars")
    @classmethod
    def _separators_cannot_be_data(cls, chars: list[str]) -> list[str]:
        # A separator must never occur inside GS1 data: GS1 character set 82 is excluded, and so
        # are "]" (starts a symbology identifier) and whitespace other than GS.
        cset82 = set("!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
        for char in chars:
            if len(char) != 1:
                raise ValueError(f"each separator is one character; {char!r} is {len(char)}")
            if char != "\x1d" and (char in cset82 or char == "]" or not char.isprintable() or char.isspace()):
                raise ValueError(
                    f"{char!r} cannot be a separator: it can occur in GS1 data or is not printable "
                    "(use a character such as '|', '~', '^' or '#')"
                )
        return chars

    @field_validator("label_pattern")
    @classmethod
    def _label_pattern_is_usable(cls, pattern: str) -> str:
        import re  # only this validator needs it

        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        groups = set(compiled.groupindex)
        if groups - {"order", "dispense", "patient"}:
            raise ValueError(f"unknown named groups {sorted(groups - {'order', 'dispense', 'patient'})}: "
                             "use order, dispense and patient")  # fmt: skip
        if not groups & {"order", "dispense"}:
            raise ValueError("needs a named group order or dispense, e.g. (?P<order>[A-Z0-9]{1,20})")
        # Scanners without symbology identifiers send GS1 and EAN codes as bare text: a pattern
        # matching those would read a medication pack or a wristband as a pharmacy label.
        for sample in ("09521234543213", "0109521234543213", "8018123456789012345675\x1d8019123"):
            if compiled.fullmatch(sample):
                raise ValueError(f"matches the GS1/EAN code {sample!r}: give labels a prefix, e.g. ^RX-")
        return pattern

    @field_validator("pump_labels")
    @classmethod
    def _giai_once(cls, labels: list[ScanPumpLabel]) -> list[ScanPumpLabel]:
        seen: set[str] = set()
        for label in labels:
            if label.giai in seen:
                raise ValueError(f"GIAI {label.giai!r} is listed twice")
            seen.add(label.giai)
        return labels


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
    hl7: Hl7Section = Hl7Section()
    fhir: FhirSection = FhirSection()
    epr: EprSection = EprSection()
    scanning: ScanningSection = ScanningSection()
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

    def tls(prefix: str, section: TlsFiles | None) -> None:
        if section is not None:
            keys = ("ca_file", "cert_file", "key_file")
            files.extend((f"{prefix}.tls.{k}", getattr(section, k)) for k in keys)

    def auth(prefix: str, section: FhirAuthSection | None) -> None:
        if section is not None:
            keys = ("token_file", "smart_key_file")
            files.extend((f"{prefix}.auth.{k}", getattr(section, k)) for k in keys)

    if config.hl7.enabled:
        tls("hl7", config.hl7.tls)
    if config.fhir.enabled:
        tls("fhir", config.fhir.tls)
        auth("fhir", config.fhir.auth)
    for i, h in enumerate(config.epr.hl7):
        tls(f"epr.hl7[{i}]", h.tls)
    for i, f in enumerate(config.epr.fhir):
        tls(f"epr.fhir[{i}]", f.tls)
        auth(f"epr.fhir[{i}]", f.auth)
    for key, path in files:
        if path is None:
            continue
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(source, key, str(path), f"a readable file ({exc.strerror})") from None
