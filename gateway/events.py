"""The event vocabulary: every event type the gateway writes to its log and each one's payload.

This module is the one place the vocabulary is defined. Each :class:`EventType` has a payload model
(:data:`PAYLOADS`); the event log refuses a payload that does not fit its model, so every event the
code emits validates against the published JSON Schema (``docs/schema/events-1.schema.json``,
generated from these models by ``scripts/gen-schemas``; docs/events.md explains each type).

Conventions of every payload: exact numbers are strings of decimals (``"0.08"``), never floats;
quantities with units are text (``"50 ug/mL"``); times are ISO 8601 UTC; keys are never omitted
(an unknown value is ``null``); no payload carries more than its model lists.

The version (:data:`SCHEMA_VERSION`) is ``MAJOR.MINOR``: a new type or a new optional key is a
minor change; renaming or removing anything, or changing what a key means, is a major one and gets
a new schema file and a new MQTT topic version.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

SCHEMA_VERSION = "1.0"
SCHEMA_ID = "urn:pumpgw:schema:events:1"


class EventType(StrEnum):
    # The gateway itself
    GATEWAY_STARTED = "gateway.started"
    GATEWAY_STOPPED = "gateway.stopped"
    CLOCK_ADJUSTED = "gateway.clock_adjusted"
    # The log itself
    LOG_NEAR_CAPACITY = "eventlog.near_capacity"
    LOG_PRUNED = "eventlog.pruned"
    LOG_WRITE_RECOVERED = "eventlog.write_recovered"
    # Pumps and their channels, as polled
    PUMP_IDENTIFIED = "pump.identified"
    LINK_LOST = "pump.link_lost"
    LINK_RESTORED = "pump.link_restored"
    CHANNEL_STATE = "channel.state_changed"
    ALARM_RAISED = "channel.alarm_raised"
    ALARM_CLEARED = "channel.alarm_cleared"
    # Infusions: the clinical reading of channel state changes
    INFUSION_STARTED = "infusion.started"
    INFUSION_RATE_CHANGED = "infusion.rate_changed"
    INFUSION_BOLUS = "infusion.bolus"
    INFUSION_PAUSED = "infusion.paused"
    INFUSION_RESUMED = "infusion.resumed"
    INFUSION_COMPLETED = "infusion.completed"
    INFUSION_STOPPED = "infusion.stopped"
    INFUSION_UNVERIFIED = "infusion.unverified"
    # Drug library
    LIBRARY_LOADED = "library.loaded"
    LIBRARY_UNAVAILABLE = "library.unavailable"
    PUMP_LIBRARY_OUTDATED = "pump.library_outdated"
    PUMP_LIBRARY_CURRENT = "pump.library_current"
    # The bedside workflow
    SCAN_ACCEPTED = "scan.accepted"
    SCAN_REJECTED = "scan.rejected"
    ORDER_RECEIVED = "order.received"
    ORDER_REJECTED = "order.rejected"
    RECONCILIATION = "reconciliation.result"
    DERS_RESULT = "ders.result"
    DERS_OVERRIDE = "ders.override"
    PROGRAMMING_SENT = "programming.sent"
    PROGRAMMING_READ_BACK = "programming.read_back"
    WORKFLOW_ORDER_SELECTED = "workflow.order_selected"
    WORKFLOW_BLOCKED = "workflow.blocked"
    WORKFLOW_CANCELLED = "workflow.cancelled"
    WORKFLOW_TIMED_OUT = "workflow.timed_out"
    WORKFLOW_ABORTED = "workflow.aborted"
    WORKFLOW_CONFIRMED = "workflow.confirmed"
    WORKFLOW_INFUSING = "workflow.infusing"
    # Delivery upstream
    DELIVERY_FAILED = "delivery.failed"
    DELIVERY_RESTORED = "delivery.restored"
    DELIVERY_REJECTED = "delivery.rejected"


# -- payload building blocks ---------------------------------------------------------------------

Decimal_ = Annotated[str, Field(pattern=r"^-?[0-9]+(\.[0-9]+)?$", description="an exact decimal as text")]
Text = Annotated[str, Field(min_length=1, max_length=4000)]
QuantityText = Annotated[
    str, Field(min_length=1, max_length=200, description='"50 ug/mL": value and UCUM unit')
]
Time = Annotated[str, Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")]
Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ChannelStateText = Literal[
    "idle", "infusing", "paused", "kvo", "bolus", "alarm", "complete", "priming", "standby", "off", "unknown"
]


class Payload(BaseModel):
    """Base of every payload model: strict types, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Empty(Payload):
    pass


class GatewayStarted(Payload):
    gateway: str
    software_version: str | None = None


class ClockAdjusted(Payload):
    step_s: Decimal_ = Field(description="wall clock minus where monotonic time says it should be; + ahead")
    wall_before: Time
    wall_after: Time


class NearCapacity(Payload):
    undelivered: int = Field(ge=0, description="events that cannot be deleted yet")
    max_events: int = Field(ge=1)
    percent: int = Field(ge=0)
    oldest_undelivered_time: Time | None
    destinations: list[str]


class Pruned(Payload):
    count: int = Field(ge=1)
    through_seq: int = Field(ge=1, description="the newest event deleted; the chain now starts after it")
    through_hash: Hash


class WriteRecovered(Payload):
    refused: int = Field(ge=1, description="events that could not be written while the log was failing")
    first_failure: Time
    last_failure: Time
    error: Text


class PumpIdentified(Payload):
    protocol: str
    manufacturer: str
    model: str
    serial: str | None
    firmware: str
    library_version: str | None
    channels: int = Field(ge=0)


class LinkLost(Payload):
    error: str | None


class ChannelStateChanged(Payload):
    from_: ChannelStateText | None = Field(alias="from")
    to: ChannelStateText
    rate_ml_h: Decimal_ | None
    volume_infused_ml: Decimal_ | None
    drug: str | None


class Alarm(Payload):
    alarm: Text


class Infusion(Payload):
    """What the pump reports at the moment of an infusion event (as polled)."""

    state: ChannelStateText
    rate_ml_h: Decimal_ | None
    vtbi_ml: Decimal_ | None
    volume_infused_ml: Decimal_ | None
    drug: str | None
    concentration: QuantityText | None
    dose_rate: QuantityText | None


class InfusionRateChanged(Infusion):
    previous_rate_ml_h: Decimal_ | None


class InfusionUnverified(Infusion):
    reason: Text


class LibraryLoaded(Payload):
    class PumpLibrary(Payload):
        model: str
        version: str

    name: str
    version: int
    hash: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
    example: bool
    author: str
    author_key_id: str
    reviewer: str
    reviewer_key_id: str
    pump_libraries: list[PumpLibrary]


class LibraryUnavailable(Payload):
    reason: Text
    required: bool


class PumpLibraryFitness(Payload):
    model: str | None
    serial: str | None
    reported: str | None
    expected: str | None
    library_version: int | None
    library_hash: str | None
    reason: Text


class ScanAccepted(Payload):
    kind: Literal["patient", "clinician", "medication", "pump", "order-label"]
    data: dict[str, str] = Field(description="the parsed content: GS1 AI (or label field) to value")
    scanner: str | None


class ScanRejected(Payload):
    raw: str = Field(max_length=4000, description="what was scanned, printable (control characters escaped)")
    reason: Text
    expected: str | None = Field(description="what the workflow expected next")
    scanner: str | None


class OrderReceived(Payload):
    source: Literal["hl7", "fhir", "rig"]
    order_id: str
    status: str | None
    drug: str | None
    drug_code: str | None
    dose: QuantityText | None
    rate: QuantityText | None
    concentration: QuantityText | None
    vtbi: QuantityText | None
    duration: QuantityText | None
    route: str | None
    ordered_at: Time | None


class OrderRejected(Payload):
    source: Literal["hl7", "fhir", "rig"]
    order_id: str | None
    code: str = Field(description="the IHE PIV error code (HL7 table 0533) or a PGW- code")
    reason: Text


class ReconciliationResult(Payload):
    class ReconCheck(Payload):
        check: str = Field(description="patient, drug, concentration, dose, rate, vtbi, duration, route, ...")
        outcome: Literal["match", "mismatch", "not-checkable"]
        expected: str | None
        found: str | None
        reason: Text

    verdict: Literal["matched", "mismatch"]
    checks: list[ReconCheck]


class DersCheck(Payload):
    class Override(Payload):
        clinician: str
        reason: str

    parameter: str
    outcome: Literal[
        "within", "soft-low", "soft-high", "hard-low", "hard-high", "needs-confirmation", "not-checkable"
    ]
    code: str
    message: Text
    value: QuantityText | None
    limit: QuantityText | None
    limit_name: str | None
    source: str | None
    override: Override | None


class DersResult(Payload):
    class Applied(Payload):
        parameter: str
        clinician: str
        reason: str

    class Refused(Payload):
        parameter: str
        clinician: str
        reason: str
        why: Text

    library_hash: str
    library_version: int
    care_area: str
    drug: str | None
    verdict: Literal["pass", "confirmation-required", "override-required", "blocked"]
    rate_ml_h: Decimal_ | None
    checks: list[DersCheck]
    overrides: list[Applied]
    refused_overrides: list[Refused]


class DersOverride(Payload):
    parameter: str
    clinician: str
    reason: Text
    value: QuantityText
    limit: QuantityText
    limit_name: str


class Programming(Payload):
    drug: str | None
    concentration: QuantityText | None
    rate_ml_h: Decimal_
    vtbi_ml: Decimal_ | None
    dose_rate: QuantityText | None
    bolus: QuantityText | None


class ReadBack(Payload):
    class Difference(Payload):
        field: str
        sent: str | None
        read: str | None

    matches: bool
    differences: list[Difference]


class WorkflowOrderSelected(Payload):
    order_id: str
    drug: Text = Field(description="the drug as the order names it")
    how: str = Field(description='how it was chosen: "label" (the pharmacy label named it) or "only order"')


class WorkflowBlocked(Payload):
    state: str = Field(description="the workflow state the sequence was in when it stopped")
    reason: Text


class WorkflowCancelled(Payload):
    state: str
    by: str = Field(description="who cancelled (badge id)")


class WorkflowTimedOut(Payload):
    state: str
    after_s: Decimal_ = Field(description="the state's timeout, in seconds")


class WorkflowAborted(Payload):
    state: str
    reason: Text


class WorkflowConfirmed(Payload):
    what: Literal["concentration", "start"]
    by: str


class WorkflowInfusing(Payload):
    order_id: str | None


class DeliveryFailed(Payload):
    destination: str
    error: Text
    backlog: int = Field(ge=0, description="events waiting for this destination when it started failing")


class DeliveryRestored(Payload):
    destination: str
    failed_for_s: Decimal_
    attempts: int = Field(ge=1)


class DeliveryRejected(Payload):
    destination: str
    event_id: str
    code: str
    reason: Text


PAYLOADS: dict[EventType, type[Payload]] = {
    EventType.GATEWAY_STARTED: GatewayStarted,
    EventType.GATEWAY_STOPPED: Empty,
    EventType.CLOCK_ADJUSTED: ClockAdjusted,
    EventType.LOG_NEAR_CAPACITY: NearCapacity,
    EventType.LOG_PRUNED: Pruned,
    EventType.LOG_WRITE_RECOVERED: WriteRecovered,
    EventType.PUMP_IDENTIFIED: PumpIdentified,
    EventType.LINK_LOST: LinkLost,
    EventType.LINK_RESTORED: Empty,
    EventType.CHANNEL_STATE: ChannelStateChanged,
    EventType.ALARM_RAISED: Alarm,
    EventType.ALARM_CLEARED: Alarm,
    EventType.INFUSION_STARTED: Infusion,
    EventType.INFUSION_RATE_CHANGED: InfusionRateChanged,
    EventType.INFUSION_BOLUS: Infusion,
    EventType.INFUSION_PAUSED: Infusion,
    EventType.INFUSION_RESUMED: Infusion,
    EventType.INFUSION_COMPLETED: Infusion,
    EventType.INFUSION_STOPPED: Infusion,
    EventType.INFUSION_UNVERIFIED: InfusionUnverified,
    EventType.LIBRARY_LOADED: LibraryLoaded,
    EventType.LIBRARY_UNAVAILABLE: LibraryUnavailable,
    EventType.PUMP_LIBRARY_OUTDATED: PumpLibraryFitness,
    EventType.PUMP_LIBRARY_CURRENT: PumpLibraryFitness,
    EventType.SCAN_ACCEPTED: ScanAccepted,
    EventType.SCAN_REJECTED: ScanRejected,
    EventType.ORDER_RECEIVED: OrderReceived,
    EventType.ORDER_REJECTED: OrderRejected,
    EventType.RECONCILIATION: ReconciliationResult,
    EventType.DERS_RESULT: DersResult,
    EventType.DERS_OVERRIDE: DersOverride,
    EventType.PROGRAMMING_SENT: Programming,
    EventType.PROGRAMMING_READ_BACK: ReadBack,
    EventType.WORKFLOW_ORDER_SELECTED: WorkflowOrderSelected,
    EventType.WORKFLOW_BLOCKED: WorkflowBlocked,
    EventType.WORKFLOW_CANCELLED: WorkflowCancelled,
    EventType.WORKFLOW_TIMED_OUT: WorkflowTimedOut,
    EventType.WORKFLOW_ABORTED: WorkflowAborted,
    EventType.WORKFLOW_CONFIRMED: WorkflowConfirmed,
    EventType.WORKFLOW_INFUSING: WorkflowInfusing,
    EventType.DELIVERY_FAILED: DeliveryFailed,
    EventType.DELIVERY_RESTORED: DeliveryRestored,
    EventType.DELIVERY_REJECTED: DeliveryRejected,
}

#: Which events are about a patient's care (exported to FHIR, documented in the record); the rest
#: are about the gateway, its pumps and its deliveries.
CLINICAL_PREFIXES = (
    "infusion.",
    "channel.alarm_",
    "scan.",
    "order.",
    "reconciliation.",
    "ders.",
    "programming.",
)


def payload_problem(type: EventType, payload: dict[str, Any]) -> str | None:
    """Why ``payload`` is not a valid payload of ``type`` (every problem, with its key), or None."""
    try:
        PAYLOADS[type].model_validate(payload)
    except ValidationError as exc:
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(payload)'}: {e['msg']}" for e in exc.errors()
        )
    return None


# -- the stored event ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refs:
    """Who an event is about, where known: ids as the hospital's systems know them."""

    patient: str | None = None  # the patient identifier (MRN) as on the wristband or order
    order: str | None = None  # the order (placer order number, or the FHIR MedicationRequest id)
    clinician: str | None = None  # the nurse or doctor (badge id)


NO_REFS = Refs()


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event not yet written: the log adds id, seq, time and the hash chain."""

    type: EventType
    payload: dict[str, Any]
    pump: str | None = None
    channel: int | None = None
    refs: Refs = NO_REFS


@dataclass(frozen=True, slots=True)
class Event:
    """An event as committed to the log."""

    seq: int  # 1, 2, 3 ... per gateway, no gaps: the order of the log
    id: str  # UUIDv7: globally unique and time-ordered
    time: str  # wall clock, ISO 8601 UTC, millisecond resolution
    gateway: str
    type: str
    pump: str | None
    channel: int | None
    patient: str | None
    order: str | None
    clinician: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str

    def content(self) -> dict[str, Any]:
        """What the hash covers: everything but the hashes themselves."""
        return {
            "seq": self.seq,
            "id": self.id,
            "time": self.time,
            "gateway": self.gateway,
            "type": self.type,
            "pump": self.pump,
            "channel": self.channel,
            "patient": self.patient,
            "order": self.order,
            "clinician": self.clinician,
            "payload": self.payload,
        }

    def as_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **self.content(), "prev_hash": self.prev_hash, "hash": self.hash}


# -- the published schema ------------------------------------------------------------------------


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    schema_: Literal["1.0"] = Field(alias="schema", description="the event schema version")
    seq: int = Field(ge=1, description="1, 2, 3 ... per gateway, no gaps")
    id: str = Field(
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        description="UUIDv7: unique, time-ordered; the de-duplication key downstream",
    )
    time: Time
    gateway: str
    pump: str | None
    channel: int | None
    patient: str | None
    order: str | None
    clinician: str | None
    prev_hash: Hash
    hash: Hash


def _event_models() -> list[type[BaseModel]]:
    models: list[type[BaseModel]] = []
    for type_, payload in PAYLOADS.items():
        name = "".join(part.title() for part in type_.value.replace("_", ".").split(".")) + "Event"
        models.append(
            create_model(
                name,
                __base__=_Envelope,
                type=(Literal[type_.value], ...),  # type: ignore[arg-type]
                payload=(payload, ...),
            )
        )
    return models


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one event record (as exported and as the ``data`` of an MQTT message)."""
    from typing import Union

    union: Any = Union[tuple(_event_models())]  # noqa: UP007 - built at run time
    schema = TypeAdapter(Annotated[union, Field(discriminator="type")]).json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"pumpgw event, schema {SCHEMA_VERSION}",
        "description": "One event of the pumpgw event log (generated from gateway/events.py; docs/events.md)",
        **schema,
    }
