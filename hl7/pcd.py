"""IHE PCD messages to the EPR, built from event-log events: pure builders, no I/O, no clock.

Which event becomes which message (:func:`build_messages`; each receiver picks its kinds):

=========  ==========================================  =============================================
kind       message                                     events
=========  ==========================================  =============================================
``ipec``   PCD-10 IPEC ``ORU^R42^ORU_R01``             ``infusion.started``/``resumed`` (delivery
                                                       start), ``infusion.paused``/``stopped``
                                                       (delivery stop), ``infusion.completed``
                                                       (delivery complete), ``infusion.rate_changed``
                                                       (stop, then start: two messages)
``acm``    PCD-04 ACM ``ORU^R40^ORU_R40``              ``channel.alarm_raised`` (phase start),
                                                       ``channel.alarm_cleared`` (phase end)
``dec``    PCD-01 DEC ``ORU^R01^ORU_R01``              ``channel.state_changed``,
                                                       ``infusion.rate_changed`` (the only records of
                                                       a channel's readings: polls are not events)
``ras``    ``RAS^O17^RAS_O17`` (HL7 2.6 pharmacy)      ``infusion.completed`` (RXA-20 ``CP``),
                                                       ``infusion.stopped`` (``PA``, or ``NA`` when
                                                       nothing was infused)
=========  ==========================================  =============================================

Every message: HL7 v2.6, MSH-9 with its structure (hl7apy, and receivers that route on it, need
MSH-9.3), MSH-15 ``AL``, MSH-16 ``NE``, MSH-21 the IHE profile (none for RAS, which is not an IHE
PCD transaction), MSH-10 deterministic per event and message (:func:`control_id`) so that a resend
after a crash carries the same id and the receiver can drop the duplicate. Facts come from the
IHE PCD TF-2 Rev 9 / Rev 10 draft (``IHEPCD/ihe-pcd-tf-2020``, ``docx/tf-v2-wip.txt``: B.5 PID,
B.7.1 OBR in ACM, B.8.5 ACM facets, Appendix M infusion events) and
``shared/reference/ihe-pcd.md``; structure as in ``hl7-examples/12_pcd10_oru_r42_*`` and ``09_*``.

Decisions (safety first; each is tested in ``tests/test_hl7_pcd.py``):

* **Never invent a patient.** IPEC, DEC and RAS document into the patient's record: an event
  without a patient is not sent to the record at all (:class:`Skipped`, with the reason), because
  HL7 2.6 makes PID-3 required and any stand-in identifier could be filed to a real patient. An
  ACM alarm without a patient is still sent (an alarm is about a device, and the Alert Manager
  routes it by device), but without PID: IHE ACM wants a PID with PID-31 ``Y`` then, which HL7
  2.6 (and hl7apy STRICT) refuses without a PID-3; ORU allows the whole patient group to be absent.
  The patient is PID-3 ``<id>^^^<authority>^MR`` and PID-5 ``^^^^^^U`` (name unknown, TF-2 B.5).
* **Never invent a clinical value.** Each OBX carries a value the event holds, or it is left out:
  no remaining volume or time, no weight, no library version (infusion payloads have none), no
  route (RXR-1 is HL7's explicit null ``""``: the gateway does not know how the line is placed).
  The rate a pump reports after a stop or at completion is a leftover setting or the KVO rate
  (``fhir/events.py`` says the same), so it is sent as the *current* flow only while the pump
  delivers and as the *programmed* rate only while it infuses. The IHE-required "program delivery
  mode" is not sent: the gateway does not know whether a pump runs a continuous, multi-step or
  intermittent program.
* **The drug** is the pump's name for it, as text (OBR-4 ``^<name>``, RXA-5); no code is looked up.
  No drug: ``999999^Medication Unknown`` (TF-2 B.7, OBR-4: "999999 can be used as the identifier and
  Medication Unknown as the description").
* **MDC_EVT_PUMP_DELIV_STOP and _COMP** have no numeric code in any source we trust
  (``hl7/codes.py``): without configured codes (:class:`IpecCodes`) they go out as
  ``^MDC_EVT_PUMP_DELIV_STOP^MDC``: CWE-1 empty, the MDC reference id as text, system MDC. The
  reference id is the term's stable name in IEEE 11073-10101 (RTMMS), so a receiver can match it,
  and it validates; it is the form the IHE examples themselves use for enumerations
  (``^pump-status-infusing``). A wrong number would be worse than none.
* **IPEC events** (TF-2 Appendix M, Table M.1.2-1): delivery start/stop/complete are sent. A pause is
  a delivery stop and a resume a start (Table M.1.2.1-4, "pausing the running infusion"); a rate
  change is a stop with delivery status ``transitioning`` at the old rate and a start at the new one
  ("Rate Change (e.g., titration)"). Not sent: a bolus (the profile reports it as a separate
  ``pump-source-info-clinician`` source with its own programmed volume, which the event does not
  carry; reporting it under the primary source would misstate what was programmed), communication
  status change (``pump.link_lost``/``restored``: neither ``MDC_EVT_COMM_STATUS_CHANGE`` nor its
  "Communication Status" parameter has a known code, and those events have no patient), program
  cleared, patient change, counters cleared, time change (the gateway logs no such events).
* **Alarms** (ACM, TF-2 B.8.5): technical alarms go under OBX-3 ``196616^MDC_EVT_ALARM^MDC`` with
  the specific alarm in OBX-5: the MDC code where :class:`AlarmTerm` knows one (occlusion
  ``196940^MDC_EVT_FLUID_LINE_OCCL``), always with the driver's name as original text (CWE-9).
  Alarm priority is sent only where configured (the event does not carry it, and ``PN`` means
  "no alarm" in one TF table and "not indicated" in another: too risky to send). The inactivation
  state facet is sent empty (the TF allows it: "This may be empty"): the gateway does not know
  whether the pump's alarm sound is paused. OBR-3 identifies this indication (its control id); OBR-29
  identifies the alarm (the raise's indication id: TF-2 B.7 "the same value of OBR-29 will
  be sent ... concerning the start, end"), given by the caller (:class:`Related`); an end whose start
  cannot be found gets OBR-29 empty. OBR-7 is when the message was built (TF-2 B.7.1: "the point in
  time at which the Alert Reporter committed itself to packaging up" the report); the alarm's own
  time is OBX-14 of the event identification.
* **Identifiers the gateway assigns** (OBR-3, ORC-3: ``<id>^<sender application>^<universal id>^
  <type>``) are the message's control id: unique per message (a rate change's two IPEC messages and
  its DEC are three reports) and the same on a resend.
* **hl7apy has no ORU_R40 structure** (in no version): ACM messages say ``ORU^R40^ORU_R40`` as IHE
  requires, and the tests validate them against ORU_R01, whose grammar covers the segments sent.
* **RAS**: RXA-3 is the time of the ``infusion.started`` this completion or stop ends (found by the
  caller, :class:`Related`); RXA-6/7 the volume the pump counted between the two (mL), exact. No
  start found (an infusion already running when the gateway started), a counter that went down
  (cleared mid-infusion), or a stop after a completion (already documented): not sent, with the
  reason. RXA-12 stays empty: HL7 2.6 defines it as the time unit that turns RXA-6/7 into a rate,
  and RXA-6/7 carry the amount; the rate during the infusion is not in these events (titrations).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Final, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from pumpgw.gateway.errors import ConfigError, Hl7Error, QuantityError
from pumpgw.gateway.events import (
    PAYLOADS,
    Alarm,
    ChannelStateChanged,
    Event,
    EventType,
    Infusion,
    InfusionRateChanged,
)
from pumpgw.gateway.quantity import Quantity

from . import codes
from .build import Party, components, escape, hl7_decimal, hl7_time, message, msh, segment, subcomponents
from .codes import Mdc, Profile

__all__ = [
    "DEFAULT_ALARM_TERMS",
    "KINDS",
    "NO_RELATED",
    "AlarmTerm",
    "IpecCodes",
    "PcdConfig",
    "PcdMessage",
    "Plan",
    "Related",
    "Skipped",
    "Wanted",
    "acm_message",
    "build_messages",
    "control_id",
    "dec_message",
    "ipec_messages",
    "messages_for",
    "ras_message",
    "related_wanted",
]

Kind = Literal["ipec", "acm", "dec", "ras"]
KINDS: Final[frozenset[str]] = frozenset({"ipec", "acm", "dec", "ras"})
_ORDER: Final[tuple[Kind, ...]] = ("ipec", "acm", "dec", "ras")  # the order messages of one event go in
_SUFFIX: Final[dict[Kind, str]] = {"ipec": "I", "acm": "A", "dec": "D", "ras": "R"}

# The MDC event partition (IEEE 11073-10101 partition 3, context-free codes 196608..262143).
_MDC_EVT_PARTITION: Final = 3
MDC_EVT_PUMP_DELIV_STOP: Final = "MDC_EVT_PUMP_DELIV_STOP"
MDC_EVT_PUMP_DELIV_COMP: Final = "MDC_EVT_PUMP_DELIV_COMP"

NULL: Final = '""'  # the HL7 null (HL7 2.6 §2.5.3): "delete / no value"

# OBR-4 for an unknown medication (TF-2 B.7, OBR-4).
_UNKNOWN_DRUG: Final = "999999^Medication Unknown"

# Enumerated values of the pump model, as text-only CWE (TF-2 Appendix M, Table M.1.2.1-4; the
# IHE example 12 writes them ^pump-status-infusing).
_INFUSING: Final = "pump-status-infusing"
_NOT_INFUSING: Final = "pump-status-not-infusing"
_DELIVERING: Final = "pump-delivery-status-delivering"
_NOT_DELIVERING: Final = "pump-delivery-status-not-delivering"
_TRANSITIONING: Final = "pump-delivery-status-transitioning"
_KVO: Final = "pump-delivery-status-kvo"
_SOURCE_PRIMARY: Final = "pump-source-info-primary"
_STOPPED_NOT_SPECIFIED: Final = "pump-stopped-not-specified"

# Channel states (gateway/events.py ChannelStateText) -> infusing status and delivery status.
# priming and unknown map to nothing: whether fluid goes to the patient is not known then.
_STATE_INFUSING: Final[dict[str, str]] = {
    **dict.fromkeys(("infusing", "bolus", "kvo"), _INFUSING),
    **dict.fromkeys(("paused", "idle", "standby", "off", "complete", "alarm"), _NOT_INFUSING),
}
_STATE_DELIVERY: Final[dict[str, str]] = {
    **dict.fromkeys(("infusing", "bolus"), _DELIVERING),
    "kvo": _KVO,
    **dict.fromkeys(("paused", "idle", "standby", "off", "complete", "alarm"), _NOT_DELIVERING),
}
_DELIVERING_STATES: Final = frozenset({"infusing", "bolus", "kvo"})

# OBX-11 (HL7 table 0085): R for values from the device (not verified by a person, as in IHE
# example 12), X for the device-level rows that carry no value, F for ACM (TF-2 B.8.6: "the only
# possible value is F").
_RESULT: Final = "R"
_DEVICE: Final = "X"
_FINAL: Final = "F"


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IpecCodes:
    """The numeric MDC codes of the IPEC delivery events the references do not give.

    ``None`` (the default) sends the term by its reference id only (``^MDC_EVT_PUMP_DELIV_STOP^MDC``).
    Set them from the IEEE 11073-10101 term server (RTMMS) when the receiver needs the numbers.
    A code outside the MDC event partition is refused (a typo would silently name another event).
    """

    deliv_stop: int | None = None
    deliv_comp: int | None = None

    def __post_init__(self) -> None:
        for key in ("deliv_stop", "deliv_comp"):
            value = getattr(self, key)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value // 65536 != _MDC_EVT_PARTITION:
                raise ConfigError(
                    "hl7 IPEC codes",
                    key,
                    value,
                    "a context-free MDC event code (partition 3: 196608 to 262143), from the IEEE "
                    "11073-10101 term server",
                )

    def stop(self) -> str:
        return _term(self.deliv_stop, MDC_EVT_PUMP_DELIV_STOP)

    def comp(self) -> str:
        return _term(self.deliv_comp, MDC_EVT_PUMP_DELIV_COMP)


def _term(code: int | None, refid: str) -> str:
    return components(None if code is None else str(code), refid, codes.MDC_SYSTEM)


@dataclass(frozen=True, slots=True)
class AlarmTerm:
    """What the gateway knows about an alarm name (``channel.alarm_raised`` ``alarm``) for ACM.

    ``event``: the MDC event code, or None (the alarm is then identified by its name only, under
    MDC_EVT_ALARM). ``priority``: ``PH``/``PM``/``PL`` where the site knows it for its pumps (the
    event does not carry it), else not sent. ``alert_type``: ``ST`` technical alarm (every alarm a
    pump driver reports is about the device), ``SP`` physiological, ``SA`` advisory.
    """

    event: Mdc | None = None
    priority: Literal["PH", "PM", "PL"] | None = None
    alert_type: Literal["ST", "SP", "SA"] = "ST"


# Alarm names the drivers use (drivers/alaris_codec.py, drivers/maps/*.toml) with a code we trust.
DEFAULT_ALARM_TERMS: Final[Mapping[str, AlarmTerm]] = MappingProxyType(
    {
        name: AlarmTerm(codes.EVT_FLUID_LINE_OCCL)
        for name in ("occlusion", "occlusion-downstream", "occlusion-upstream")
    }
)
_UNKNOWN_ALARM: Final = AlarmTerm()


@dataclass(frozen=True, slots=True)
class PcdConfig:
    """How the messages to one receiver are built.

    ``sender``/``receiver``: MSH-3/4 and MSH-5/6. The sender's application (and universal id, if
    set) also names the gateway in the entity identifiers it assigns (OBR-3, ORC-3). ``messages``:
    the kinds this receiver takes (:data:`KINDS`). ``patient_id_authority``: PID-3.4, the assigning
    authority of the patient ids the gateway scans (empty if not set). ``order_namespace``: EI-2 of
    the order id in OBR-2/ORC-2 (``PCD-03``, as IHE example 12). ``location``: PV1-3 as PL
    components (point of care, room, bed, facility) where the gateway's bed is known; no PV1 without
    it. ``processing_id``: MSH-11 (``P`` production, ``T`` training, ``D`` debugging).
    """

    sender: Party
    receiver: Party
    messages: frozenset[str] = frozenset({"ipec", "acm"})
    ipec_codes: IpecCodes = IpecCodes()
    alarm_terms: Mapping[str, AlarmTerm] = field(default_factory=lambda: DEFAULT_ALARM_TERMS)
    patient_id_authority: str | None = None
    order_namespace: str | None = "PCD-03"
    location: tuple[str, ...] | None = None
    processing_id: Literal["P", "T", "D"] = "P"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.messages) - KINDS)
        if unknown:
            raise ConfigError("hl7 PCD config", "messages", unknown, f"a subset of {sorted(KINDS)}")
        if self.location is not None and not 1 <= len(self.location) <= 4:
            raise ConfigError(
                "hl7 PCD config",
                "location",
                self.location,
                "1 to 4 parts: point of care, room, bed, facility",
            )


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PcdMessage:
    """One message ready to send: its kind, its MSH-10 and its bytes."""

    kind: Kind
    control_id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Skipped:
    """An event that does not become a message of ``kind`` for this reason (not an error)."""

    kind: Kind
    reason: str


@dataclass(frozen=True, slots=True)
class Related:
    """Earlier events the messages of one event refer to, found in the log by the caller
    (:func:`related_wanted` says which): the ``infusion.started`` an ``infusion.completed`` or
    ``infusion.stopped`` ends (for RAS), or the last infusion event before it if that was not a start;
    the ``channel.alarm_raised`` a ``channel.alarm_cleared`` ends (for ACM OBR-29)."""

    infusion_start: Event | None = None
    alarm_start: Event | None = None


NO_RELATED: Final = Related()


@dataclass(frozen=True, slots=True)
class Plan:
    """What one event becomes for one receiver: the messages in sending order, and what was not sent
    and why."""

    messages: tuple[PcdMessage, ...]
    skipped: tuple[Skipped, ...]


def control_id(event: Event, kind: Kind, index: int = 0) -> str:
    """MSH-10 of the ``index``-th message of ``kind`` for ``event``: the same on every resend.

    The event id (UUIDv7) is globally unique, so the id is too; the kind is in it (not only an index)
    so that a receiver's message set changing between a crash and the resend cannot give one id to
    two different messages.
    """
    return f"{event.id}-{_SUFFIX[kind]}{index}"


# -- choosing ------------------------------------------------------------------------------------

# Related events: what each kind needs found before it is built.
_INFUSION_TYPES: Final = frozenset(
    {EventType.INFUSION_STARTED, EventType.INFUSION_COMPLETED, EventType.INFUSION_STOPPED}
)
_ALARM_TYPES: Final = frozenset({EventType.ALARM_RAISED, EventType.ALARM_CLEARED})


@dataclass(frozen=True, slots=True)
class Wanted:
    """An earlier event :func:`build_messages` needs for one event: the newest event before it on
    the same gateway, pump and channel whose type is one of ``types`` (and, for alarms, whose
    ``alarm`` is ``alarm``). The caller finds it and passes it as ``Related.<slot>``, whatever its
    type turns out to be."""

    slot: Literal["infusion_start", "alarm_start"]
    types: frozenset[str]
    alarm: str | None = None

    def matches(self, candidate: Event, event: Event) -> bool:
        """Whether ``candidate`` is what is wanted for ``event`` (ignoring which one is newest)."""
        return (
            candidate.seq < event.seq
            and candidate.type in self.types
            and (candidate.gateway, candidate.pump, candidate.channel)
            == (event.gateway, event.pump, event.channel)
            and (self.alarm is None or candidate.payload.get("alarm") == self.alarm)
        )


def related_wanted(event: Event, config: PcdConfig) -> Wanted | None:
    """Which earlier event :func:`build_messages` wants for ``event``, or None: for RAS, the last
    infusion start, completion or stop of the channel (a completion or stop documents the
    administration that the start began, unless another completion or stop came first); for ACM, the
    last raise or clear of the same alarm (a clear ends the alarm a raise began)."""
    if "ras" in config.messages and event.type in (EventType.INFUSION_COMPLETED, EventType.INFUSION_STOPPED):
        return Wanted("infusion_start", frozenset(str(t) for t in _INFUSION_TYPES))
    if "acm" in config.messages and event.type == EventType.ALARM_CLEARED:
        name = event.payload.get("alarm")
        if isinstance(name, str):
            return Wanted("alarm_start", frozenset(str(t) for t in _ALARM_TYPES), name)
    return None


def build_messages(event: Event, config: PcdConfig, *, at: datetime, related: Related = NO_RELATED) -> Plan:
    """Every message ``event`` becomes for a receiver configured by ``config``, built at ``at`` (MSH-7).

    Raises Hl7Error when the event cannot be written as HL7 (a payload that does not fit its type,
    a concentration that is not a UCUM quantity): such an event can never be sent, so the caller
    records it instead of retrying.
    """
    messages: list[PcdMessage] = []
    skipped: list[Skipped] = []
    for kind in _ORDER:
        if kind not in config.messages:
            continue
        if kind == "ipec":
            built: Sequence[PcdMessage] | PcdMessage | Skipped | None = ipec_messages(event, config, at=at)
        elif kind == "acm":
            built = acm_message(event, config, at=at, alert_start=related.alarm_start)
        elif kind == "dec":
            built = dec_message(event, config, at=at)
        else:
            built = ras_message(event, config, at=at, infusion_start=related.infusion_start)
        if isinstance(built, Skipped):
            skipped.append(built)
        elif isinstance(built, PcdMessage):
            messages.append(built)
        elif built is not None:
            messages.extend(built)
    return Plan(tuple(messages), tuple(skipped))


def messages_for(
    event: Event, config: PcdConfig, *, at: datetime, related: Related = NO_RELATED
) -> list[bytes]:
    """The bytes of every message ``event`` becomes (see :func:`build_messages`); ``[]`` for none."""
    return [m.data for m in build_messages(event, config, at=at, related=related).messages]


# -- PCD-10 IPEC ---------------------------------------------------------------------------------

_IPEC_EVENTS: Final = frozenset(
    {
        EventType.INFUSION_STARTED,
        EventType.INFUSION_RESUMED,
        EventType.INFUSION_PAUSED,
        EventType.INFUSION_STOPPED,
        EventType.INFUSION_COMPLETED,
        EventType.INFUSION_RATE_CHANGED,
    }
)


@dataclass(frozen=True, slots=True)
class _Delivery:
    """One IPEC delivery event: its term, the delivery status to report, and the rate override."""

    term: str
    delivery_status: str | None
    rate_ml_h: str | None  # the programmed rate to report (None: not reported)
    dose_rate: bool  # whether the event's dose rate belongs to this delivery


def ipec_messages(
    event: Event, config: PcdConfig, *, at: datetime
) -> tuple[PcdMessage, ...] | Skipped | None:
    """PCD-10 ``ORU^R42^ORU_R01`` for an infusion event (two for a rate change: stop, then start).

    None if the event is not one IPEC reports; :class:`Skipped` if it names no patient.
    """
    if event.type not in _IPEC_EVENTS:
        return None
    if (skip := _no_patient("ipec", event)) is not None:
        return skip
    p = _payload(event, Infusion)
    deliveries = _deliveries(event, p, config.ipec_codes)
    return tuple(
        PcdMessage("ipec", cid, _ipec_bytes(event, p, d, config, at=at, control=cid))
        for i, d in enumerate(deliveries)
        for cid in (control_id(event, "ipec", i),)
    )


def _deliveries(event: Event, p: Infusion, ipec: IpecCodes) -> list[_Delivery]:
    start = codes.EVT_PUMP_DELIV_START.cwe()
    state = _STATE_DELIVERY.get(p.state)
    running_rate = p.rate_ml_h if p.state == "infusing" else None
    if event.type in (EventType.INFUSION_STARTED, EventType.INFUSION_RESUMED):
        return [_Delivery(start, state, running_rate, True)]
    if event.type in (EventType.INFUSION_PAUSED, EventType.INFUSION_STOPPED):
        return [_Delivery(ipec.stop(), state, None, False)]
    if event.type == EventType.INFUSION_COMPLETED:
        # Into KVO the pump goes on delivering: "transitioning" (TF-2 Table M.1.2.1-4, the KVO case).
        status = _TRANSITIONING if p.state == "kvo" else state
        return [_Delivery(ipec.comp(), status, None, False)]
    # A rate change: the old segment stops (transitioning, at the old rate; its dose rate is not in
    # the event), and a new one starts at the new rate.
    previous = p.previous_rate_ml_h if isinstance(p, InfusionRateChanged) else None
    return [
        _Delivery(ipec.stop(), _TRANSITIONING, previous, False),
        _Delivery(start, state, running_rate, True),
    ]


def _ipec_bytes(
    event: Event, p: Infusion, d: _Delivery, config: PcdConfig, *, at: datetime, control: str
) -> bytes:
    when = _event_time(event)
    rows = _Obx(hl7_time(when))
    rows.device(codes.MDS, "1.0.0.0", _equipment(event, config, channel=False))
    rows.add("CWE", codes.EVT_COND, "1.0.0.1", d.term)
    rows.add("ST", codes.EVT_SOURCE, "1.0.0.2", escape("1.1.2.0"))  # the fluid source below
    _channel_rows(rows, event, config, _Reading.of(p, d))
    return message(
        [
            _msh(config, "ORU^R42^ORU_R01", control, at, codes.PCD_10_IPEC),
            *_patient(_patient_id(event), config),
            _obr(event, config, when, control, service=_drug_service(p.drug)),
            *rows.segments,
        ]
    )


# -- PCD-01 DEC ----------------------------------------------------------------------------------


def dec_message(event: Event, config: PcdConfig, *, at: datetime) -> PcdMessage | Skipped | None:
    """PCD-01 ``ORU^R01^ORU_R01``: the channel's readings at a state or rate change, in the same
    containment as IPEC but without the event rows. None for other events."""
    if event.type == EventType.CHANNEL_STATE:
        reading = _Reading.of_state(_payload(event, ChannelStateChanged))
        drug = event.payload.get("drug")
    elif event.type == EventType.INFUSION_RATE_CHANGED:
        infusion = _payload(event, Infusion)
        reading = _Reading.of(infusion, None)
        drug = infusion.drug
    else:
        return None
    if (skip := _no_patient("dec", event)) is not None:
        return skip
    when = _event_time(event)
    rows = _Obx(hl7_time(when))
    rows.device(codes.MDS, "1.0.0.0", _equipment(event, config, channel=False))
    _channel_rows(rows, event, config, reading)
    cid = control_id(event, "dec")
    data = message(
        [
            _msh(config, "ORU^R01^ORU_R01", cid, at, codes.PCD_01_DEC),
            *_patient(_patient_id(event), config),
            _obr(event, config, when, cid, service=_drug_service(drug if isinstance(drug, str) else None)),
            *rows.segments,
        ]
    )
    return PcdMessage("dec", cid, data)


# -- PCD-04 ACM ----------------------------------------------------------------------------------

_PHASE: Final = {EventType.ALARM_RAISED: ("start", "active"), EventType.ALARM_CLEARED: ("end", "inactive")}


def acm_message(
    event: Event, config: PcdConfig, *, at: datetime, alert_start: Event | None = None
) -> PcdMessage | Skipped | None:
    """PCD-04 ``ORU^R40^ORU_R40`` for an alarm raised (phase start) or cleared (phase end).

    ``alert_start``: for a clear, the ``channel.alarm_raised`` event of the same alarm (OBR-29); any
    other event given there is ignored. None for events that are not alarms.
    """
    if event.type not in _PHASE:
        return None
    p = _payload(event, Alarm)
    phase, state = _PHASE[EventType(event.type)]
    term = config.alarm_terms.get(p.alarm, _UNKNOWN_ALARM)
    when = _event_time(event)
    if event.type == EventType.ALARM_RAISED:
        parent: str | None = control_id(event, "acm")
    elif (
        alert_start is not None and alert_start.type == EventType.ALARM_RAISED and alert_start.seq < event.seq
    ):
        parent = control_id(alert_start, "acm")
    else:
        parent = None
    # Five-level OBX-4 (TF-2 B.8.5): the source's MDS.VMD.CHAN.METRIC, then the facet.
    source, base = (codes.VMD, "1.1.0.0") if event.channel is not None else (codes.MDS, "1.0.0.0")
    rows = _Obx("")
    code = (
        (None, None, None)
        if term.event is None
        else (str(term.event.code), term.event.refid, codes.MDC_SYSTEM)
    )
    identification = components(*code, None, None, None, None, None, escape(p.alarm))
    rows.raw(
        "CWE",
        codes.EVT_ALARM,
        f"{base}.1",
        identification,
        status=_FINAL,
        time=hl7_time(when),
        equipment=_equipment(event, config, channel=event.channel is not None),
    )
    rows.raw("CWE", codes.ALERT_SOURCE, f"{base}.2", source.cwe(), status=_FINAL)
    rows.raw("ST", codes.EVENT_PHASE, f"{base}.3", phase, status=_FINAL)
    rows.raw("ST", codes.ALARM_STATE, f"{base}.4", state, status=_FINAL)
    rows.raw("ST", codes.ALARM_INACTIVATION_STATE, f"{base}.5", "", status=_FINAL)
    if term.priority is not None:
        rows.raw("ST", codes.ALARM_PRIORITY, f"{base}.6", term.priority, status=_FINAL)
    rows.raw("ST", codes.ALERT_TYPE, f"{base}.7", term.alert_type, status=_FINAL)
    rows.raw("ST", codes.ALERT_TEXT, f"{base}.8", escape(_alarm_text(event, p.alarm)), status=_FINAL)
    cid = control_id(event, "acm")
    indication = _ei(cid, config)
    obr = segment(
        "OBR",
        "1",
        indication,
        indication,
        codes.EVT_ALARM.cwe(),
        "",
        "",
        hl7_time(at),
        *([""] * 21),
        "" if parent is None else components(None, _ei(parent, config, sub=True)),
    )
    data = message(
        [
            _msh(config, "ORU^R40^ORU_R40", cid, at, codes.PCD_04_ACM),
            *(_patient(event.patient, config) if event.patient is not None and _has_patient(event) else ()),
            obr,
            *rows.segments,
        ]
    )
    return PcdMessage("acm", cid, data)


def _alarm_text(event: Event, alarm: str) -> str:
    where = "" if event.pump is None else f"pump {event.pump}"
    if event.channel is not None:
        where += f" channel {event.channel}"
    return f"{alarm} ({where.strip()})" if where else alarm


# -- RAS^O17 -------------------------------------------------------------------------------------

_RAS_EVENTS: Final = frozenset({EventType.INFUSION_COMPLETED, EventType.INFUSION_STOPPED})
_ML: Final = codes.UNIT_BY_UCUM["mL"]


def ras_message(
    event: Event, config: PcdConfig, *, at: datetime, infusion_start: Event | None
) -> PcdMessage | Skipped | None:
    """``RAS^O17^RAS_O17``: the administration an ``infusion.completed`` or ``infusion.stopped`` ends.

    ``infusion_start``: the newest ``infusion.started``/``completed``/``stopped`` event of the same
    pump channel before this one (:func:`related_wanted`). None for other events; :class:`Skipped`
    when the administration cannot be stated exactly (see the module docstring).
    """
    if event.type not in _RAS_EVENTS:
        return None
    if (skip := _no_patient("ras", event)) is not None:
        return skip
    end = _payload(event, Infusion)
    start = infusion_start
    if start is None or start.seq >= event.seq or (start.pump, start.channel) != (event.pump, event.channel):
        return Skipped("ras", "no infusion.started of this pump channel found before it: the start time "
                       "and the volume given are not known (an infusion already running when the "
                       "gateway started)")  # fmt: skip
    if start.type != EventType.INFUSION_STARTED:
        return Skipped("ras", f"the infusion was already documented by {start.type} (event {start.seq})")
    if start.patient != event.patient:
        return Skipped("ras", f"the infusion started for another patient (event {start.seq})")
    began = _payload(start, Infusion)
    if end.volume_infused_ml is None or began.volume_infused_ml is None:
        return Skipped("ras", "the pump did not report its volume counter at the start and the end")
    given = Decimal(end.volume_infused_ml) - Decimal(began.volume_infused_ml)
    if given < 0:
        return Skipped(
            "ras",
            f"the pump's volume counter went down ({began.volume_infused_ml} mL at the start, "
            f"{end.volume_infused_ml} mL at the end): it was cleared during the infusion",
        )
    # HL7 table 0322: CP complete, PA partial administration, NA not administered.
    if event.type == EventType.INFUSION_COMPLETED:
        status = "CP"
    elif given > 0:
        status = "PA"
    else:
        status = "NA"
    cid = control_id(event, "ras")
    drug = end.drug or began.drug
    rxa = segment(
        "RXA",
        "0",
        "1",
        hl7_time(_event_time(start)),
        hl7_time(_event_time(event)),
        _drug_service(drug),
        hl7_decimal(given),
        components(_ML.ucum, _ML.ucum, "UCUM", str(_ML.code), _ML.refid, codes.MDC_SYSTEM),
        "",
        "",
        "" if event.clinician is None else escape(event.clinician),
        *([""] * 9),
        status,
    )
    rows = _Obx(hl7_time(_event_time(event)))
    rows.device(codes.MDS, "1.0.0.0", _equipment(event, config, channel=False))
    if event.channel is not None:
        rows.device(codes.VMD, "1.1.0.0", _equipment(event, config, channel=True))
    data = message(
        [
            _msh(config, "RAS^O17^RAS_O17", cid, at, None),
            *_patient(_patient_id(event), config),
            segment(
                "ORC",
                "RE",
                _order(event, config),
                _ei(cid, config),
                *([""] * 5),
                hl7_time(_event_time(event)),
            ),
            rxa,
            segment("RXR", NULL),  # route: HL7's explicit null, not known to the gateway
            *rows.segments,
        ]
    )
    return PcdMessage("ras", cid, data)


# -- shared pieces -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reading:
    """What a message reports about a channel, from an infusion or channel-state payload."""

    state: str
    delivery_status: str | None
    rate_ml_h: str | None  # programmed rate (source level)
    current_ml_h: str | None  # current flow (delivery info level)
    vtbi_ml: str | None
    volume_ml: str | None
    drug: str | None
    concentration: str | None
    dose_rate: str | None

    @classmethod
    def of(cls, p: Infusion, d: _Delivery | None) -> _Reading:
        current = p.rate_ml_h if p.state in _DELIVERING_STATES else None
        if d is None:  # DEC: what the state says
            return cls(
                p.state,
                _STATE_DELIVERY.get(p.state),
                p.rate_ml_h if p.state == "infusing" else None,
                current,
                p.vtbi_ml,
                p.volume_infused_ml,
                p.drug,
                p.concentration,
                p.dose_rate,
            )
        return cls(
            p.state,
            d.delivery_status,
            d.rate_ml_h,
            current,
            p.vtbi_ml,
            p.volume_infused_ml,
            p.drug,
            p.concentration,
            p.dose_rate if d.dose_rate else None,
        )

    @classmethod
    def of_state(cls, p: ChannelStateChanged) -> _Reading:
        return cls(
            p.to,
            _STATE_DELIVERY.get(p.to),
            p.rate_ml_h if p.to == "infusing" else None,
            p.rate_ml_h if p.to in _DELIVERING_STATES else None,
            None,
            p.volume_infused_ml,
            p.drug,
            None,
            None,
        )


def _channel_rows(rows: _Obx, event: Event, config: PcdConfig, r: _Reading) -> None:
    """VMD 1.1.0.0 (the channel), delivery info 1.1.1.x, fluid source 1.1.2.x (IHE example 12)."""
    rows.device(codes.VMD, "1.1.0.0", _equipment(event, config, channel=True))
    rows.device(codes.DELIVERY_INFO, "1.1.1.0", None)
    info = _Metrics(rows, "1.1.1")
    if (infusing := _STATE_INFUSING.get(r.state)) is not None:
        info.add("CWE", codes.PUMP_INFUSING_STATUS, _enum(infusing))
    if r.current_ml_h is not None:
        info.number(codes.FLOW_FLUID_PUMP_CURRENT, r.current_ml_h, "mL/h", "rate_ml_h")
    info.add("CWE", codes.ACTIVE_SOURCES, _enum(_SOURCE_PRIMARY))
    rows.device(codes.INFUSATE_SOURCE_PRIMARY, "1.1.2.0", None)
    source = _Metrics(rows, "1.1.2")
    if r.delivery_status is not None:
        source.add("CWE", codes.CURRENT_DELIVERY_STATUS, _enum(r.delivery_status))
        if r.delivery_status == _NOT_DELIVERING:
            # Required when not delivering (TF-2 Table M.1.2.1-2); the pump does not say why.
            source.add("CWE", codes.NOT_DELIVERING_REASON, _enum(_STOPPED_NOT_SPECIFIED))
    if event.channel is not None:
        source.add("ST", codes.SOURCE_CHANNEL_LABEL, escape(str(event.channel)))
    if r.rate_ml_h is not None:
        source.number(codes.FLOW_FLUID_PUMP, r.rate_ml_h, "mL/h", "rate_ml_h")
    if r.dose_rate is not None:
        source.quantity(codes.RATE_DOSE, r.dose_rate, "dose_rate")
    if r.vtbi_ml is not None:
        source.number(codes.VOL_FLUID_TBI, r.vtbi_ml, "mL", "vtbi_ml")
    if r.volume_ml is not None:
        source.number(codes.VOL_FLUID_DELIV_TOTAL, r.volume_ml, "mL", "volume_infused_ml")
    if r.drug is not None:
        source.add("ST", codes.DRUG_NAME_LABEL, escape(r.drug))
    if r.concentration is not None:
        source.quantity(codes.CONC_DRUG, r.concentration, "concentration")


class _Obx:
    """OBX rows in order, numbered; ``time`` (OBX-14) on every row that carries a value."""

    def __init__(self, time: str) -> None:
        self.time = time
        self.segments: list[str] = []

    def device(self, term: Mdc, sub_id: str, equipment: str | None) -> None:
        self.raw("", term, sub_id, "", status=_DEVICE, equipment=equipment)

    def add(self, value_type: str, term: Mdc, sub_id: str, value: str, units: str = "") -> None:
        self.raw(value_type, term, sub_id, value, units=units, status=_RESULT, time=self.time)

    def raw(
        self,
        value_type: str,
        term: Mdc,
        sub_id: str,
        value: str,
        *,
        units: str = "",
        status: str,
        time: str = "",
        equipment: str | None = None,
    ) -> None:
        self.segments.append(
            segment(
                "OBX",
                str(len(self.segments) + 1),
                value_type,
                term.cwe(),
                sub_id,
                value,
                units,
                "",
                "",
                "",
                "",
                status,
                "",
                "",
                time,
                "",
                "",
                "",
                equipment or "",
            )
        )


class _Metrics:
    """Metric rows under one device row (``prefix`` ``1.1.2`` gives ``1.1.2.1``, ``1.1.2.2`` ...)."""

    def __init__(self, rows: _Obx, prefix: str) -> None:
        self.rows = rows
        self.prefix = prefix
        self.count = 0

    def add(self, value_type: str, term: Mdc, value: str, units: str = "") -> None:
        self.count += 1
        self.rows.add(value_type, term, f"{self.prefix}.{self.count}", value, units)

    def number(self, term: Mdc, value: str, unit: str, key: str) -> None:
        try:
            quantity = Quantity.of(value, unit)
        except QuantityError as exc:
            raise Hl7Error(
                f"OBX {term.refid}: payload {key} {value!r} is not an exact decimal ({exc})"
            ) from exc
        self.add("NM", term, hl7_decimal(quantity.value), _unit(quantity.unit))

    def quantity(self, term: Mdc, text: str, key: str) -> None:
        try:
            quantity = Quantity.parse(text)
        except QuantityError as exc:
            raise Hl7Error(
                f"OBX {term.refid}: payload {key} {text!r} is not '<number> <UCUM unit>' ({exc})"
            ) from exc
        self.add("NM", term, hl7_decimal(quantity.value), _unit(quantity.unit))


def _unit(ucum: str) -> str:
    """OBX-6: the MDC unit with its UCUM alternate where the MDC code is known (IHE prefers MDC),
    else the UCUM code alone (TF-2 B.8.5 OBX-6: "The preferred format is an MDC value, secondly a
    UCUM value"); never a guessed MDC code."""
    known = codes.UNIT_BY_UCUM.get(ucum)
    if known is not None:
        return known.ce()
    return components(escape(ucum), escape(ucum), "UCUM")


def _enum(value: str) -> str:
    return components(None, value)


def _msh(config: PcdConfig, message_type: str, control: str, at: datetime, profile: Profile | None) -> str:
    return msh(
        sender=config.sender,
        receiver=config.receiver,
        message_type=message_type,
        control_id=control,
        at=at,
        accept_ack="AL",
        application_ack="NE",
        profile=profile,
        processing_id=config.processing_id,
    )


def _has_patient(event: Event) -> bool:
    return event.patient is not None and event.patient.strip() != ""


def _no_patient(kind: Kind, event: Event) -> Skipped | None:
    if _has_patient(event):
        return None
    return Skipped(kind, "the event names no patient: nothing is documented to the record without one")


def _patient_id(event: Event) -> str:
    """The patient of an event already checked by :func:`_no_patient`."""
    if event.patient is None:  # pragma: no cover - every caller checked with _no_patient first
        raise Hl7Error(f"event {event.seq} ({event.id}) names no patient")
    return event.patient


def _patient(patient: str, config: PcdConfig) -> Iterable[str]:
    """PID (and PV1 where the location is configured)."""
    identifier = components(escape(patient), None, None, escape(config.patient_id_authority or ""), "MR")
    yield segment("PID", "", "", identifier, "", components(None, None, None, None, None, None, "U"))
    if config.location is not None:
        yield segment("PV1", "", "U", components(*(escape(part) for part in config.location)))


def _obr(event: Event, config: PcdConfig, when: datetime, filler: str, *, service: str) -> str:
    """OBR for IPEC and DEC: OBR-2 the order (PCD-03 placer number), OBR-3 this report (``filler``:
    the message's control id, unique per message and the same on a resend), OBR-4 the drug, OBR-7
    when it happened."""
    return segment("OBR", "1", _order(event, config), _ei(filler, config), service, "", "", hl7_time(when))


def _order(event: Event, config: PcdConfig) -> str:
    if event.order is None or event.order.strip() == "":
        return ""
    return components(escape(event.order), escape(config.order_namespace or ""))


def _ei(identifier: str, config: PcdConfig, *, sub: bool = False) -> str:
    """An entity identifier the gateway assigns: id ^ sender application ^ universal id ^ type
    (``sub``: as subcomponents, inside OBR-29)."""
    join = subcomponents if sub else components
    s = config.sender
    return join(
        escape(identifier), escape(s.application), escape(s.universal_id), escape(s.universal_id_type)
    )


def _equipment(event: Event, config: PcdConfig, *, channel: bool) -> str | None:
    """OBX-18: the pump (EI-1 its id, EI-2 the gateway that names it), or the pump channel."""
    if event.pump is None:
        return None
    name = event.pump if not channel or event.channel is None else f"{event.pump}/{event.channel}"
    if channel and event.channel is None:
        return None
    return components(escape(name), escape(event.gateway))


def _drug_service(drug: str | None) -> str:
    if drug is None or drug.strip() == "":
        return _UNKNOWN_DRUG
    return components(None, escape(drug))


def _event_time(event: Event) -> datetime:
    try:
        return datetime.fromisoformat(event.time.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Hl7Error(f"event {event.seq} ({event.id}): time {event.time!r} is not ISO 8601") from exc


_M = TypeVar("_M", bound=BaseModel)


def _payload(event: Event, model: type[_M]) -> _M:
    """The payload as its type's model (``PAYLOADS``), which must be ``model`` or a subclass of it."""
    bad = f"event {event.seq} ({event.id}): the payload is not a valid {event.type} payload"
    try:
        parsed = PAYLOADS[EventType(event.type)].model_validate(event.payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise Hl7Error(f"{bad}: {problems}") from exc
    if not isinstance(parsed, model):  # pragma: no cover - callers ask only for their type's model
        raise Hl7Error(f"{bad}: expected {model.__name__}")
    return parsed
