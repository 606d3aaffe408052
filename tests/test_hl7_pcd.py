"""IHE PCD messages built from event-log events (hl7/pcd.py): what each event becomes, field by field,
and that every message passes hl7apy's STRICT validation.

Golden references: ``shared/reference/hl7-examples/12_pcd10_oru_r42_ihe_tf2_rev9_M1-2-2_lvp_delivery_start.hl7``
(IHE PCD TF-2 Rev 9, App. M.1.2.2: the IPEC structure, codes, units and containment) and
``09_pcd04_oru_r40_ihe_tf2_rev9_E3-2_bbraun_occlusion_start.hl7`` (TF-2 E.3.2: the ACM facets).
Rules quoted from TF-2 Rev 9/10 draft (``IHEPCD/ihe-pcd-tf-2020`` ``docx/tf-v2-wip.txt``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from event_samples import SAMPLES
from hl7_samples import example_path
from hypothesis import given, settings
from hypothesis import strategies as st

from pumpgw.gateway.errors import ConfigError, Hl7Error
from pumpgw.gateway.events import Event, EventType
from pumpgw.hl7 import codes
from pumpgw.hl7.build import Party
from pumpgw.hl7.message import Hl7Message, Segment, parse_message
from pumpgw.hl7.pcd import (
    KINDS,
    AlarmTerm,
    IpecCodes,
    PcdConfig,
    PcdMessage,
    Related,
    Skipped,
    acm_message,
    build_messages,
    control_id,
    dec_message,
    ipec_messages,
    messages_for,
    ras_message,
    related_wanted,
)
from pumpgw.hl7.validate import validate_strict as _validate_strict

IPEC_EXAMPLE = example_path("12")  # 12_pcd10_oru_r42_ihe_tf2_rev9_M1-2-2_lvp_delivery_start.hl7
ACM_EXAMPLE = example_path("09")  # 09_pcd04_oru_r40_ihe_tf2_rev9_E3-2_bbraun_occlusion_start.hl7

AT = datetime(2026, 11, 22, 4, 0, 0, tzinfo=UTC)  # when the message is built (MSH-7)
HAPPENED = "2026-11-22T03:19:16.123Z"  # when the event happened
CONFIG = PcdConfig(
    sender=Party("PUMPGW", "WARD7"),
    receiver=Party("EPR", "HOSP"),
    messages=KINDS,
    patient_id_authority="HOSP",
)


def event(
    type_: EventType | str, payload: dict[str, Any] | None = None, *, seq: int = 10, **envelope: Any
) -> Event:
    """An event as the log would hand it out (payload: the sample of its type unless given)."""
    fields: dict[str, Any] = {
        "seq": seq,
        "id": f"0193a6b0-1c2d-7e3f-8a4b-{seq:012d}",
        "time": HAPPENED,
        "gateway": "gw-ward7",
        "type": str(type_),
        "pump": "pump-a",
        "channel": 1,
        "patient": "MRN-0042",
        "order": "AB12345",
        "clinician": "RN-17",
        "payload": SAMPLES[EventType(type_)] if payload is None else payload,
        "prev_hash": "0" * 64,
        "hash": "1" * 64,
    }
    fields.update(envelope)
    return Event(**fields)


def validate_strict(data: bytes) -> None:
    """hl7apy STRICT (``pumpgw.hl7.validate``). hl7apy has no ORU_R40 structure in any version:
    validate_strict checks an ``ORU^R40^ORU_R40`` against ORU_R01, whose grammar covers the
    segments ACM sends (MSH, [PID [PV1]], OBR, OBX...)."""
    _validate_strict(data)


def parsed(message: PcdMessage) -> Hl7Message:
    return parse_message(message.data)


def obx_rows(m: Hl7Message) -> list[Segment]:
    return m.segments("OBX")


def obx_by_code(m: Hl7Message, code: int) -> list[Segment]:
    return [s for s in obx_rows(m) if s.component(3, 1) == str(code)]


def one(built: object) -> PcdMessage:
    if isinstance(built, tuple):
        assert len(built) == 1, built
        built = built[0]
    assert isinstance(built, PcdMessage), built
    return built


def example(path: Path) -> Hl7Message:
    return parse_message(path.read_bytes())


# -- every message validates ------------------------------------------------------------------

START = event(
    EventType.INFUSION_STARTED, {**SAMPLES[EventType.INFUSION_STARTED], "volume_infused_ml": "10.0"}, seq=3
)
RAISED = event(EventType.ALARM_RAISED, seq=4)

CASES: list[tuple[str, Event, Related]] = [
    ("ipec", event(EventType.INFUSION_STARTED), Related()),
    ("ipec", event(EventType.INFUSION_RESUMED), Related()),
    ("ipec", event(EventType.INFUSION_PAUSED), Related()),
    ("ipec", event(EventType.INFUSION_STOPPED), Related()),
    ("ipec", event(EventType.INFUSION_COMPLETED), Related()),
    ("ipec", event(EventType.INFUSION_RATE_CHANGED), Related()),
    ("dec", event(EventType.CHANNEL_STATE), Related()),
    ("dec", event(EventType.INFUSION_RATE_CHANGED), Related()),
    ("acm", event(EventType.ALARM_RAISED), Related()),
    ("acm", event(EventType.ALARM_CLEARED), Related(alarm_start=RAISED)),
    ("acm", event(EventType.ALARM_RAISED, patient=None, channel=None), Related()),
    ("ras", event(EventType.INFUSION_COMPLETED), Related(infusion_start=START)),
    ("ras", event(EventType.INFUSION_STOPPED), Related(infusion_start=START)),
]


@pytest.mark.parametrize(("kind", "ev", "related"), CASES, ids=[f"{k}-{e.type}" for k, e, _ in CASES])
def test_every_message_passes_hl7apy_strict_validation(kind: str, ev: Event, related: Related) -> None:
    config = PcdConfig(CONFIG.sender, CONFIG.receiver, messages=frozenset({kind}), location=("ICU", "3", "1"))
    plan = build_messages(ev, config, at=AT, related=related)
    assert plan.messages, plan.skipped
    for message in plan.messages:
        validate_strict(message.data)
        m = parsed(message)
        assert m.msh.component(12) == "2.6"
        assert (m.accept_ack, m.app_ack) == ("AL", "NE")
        assert m.control_id == message.control_id


def test_message_types_and_profiles() -> None:
    """MSH-9 always with its structure (hl7apy needs MSH-9.3 to tell R40 and R42 from R01); MSH-21
    the profile OID of ``hl7/codes.py`` (none for RAS, which is not an IHE PCD transaction)."""
    expected = {
        "ipec": (["ORU", "R42", "ORU_R01"], codes.PCD_10_IPEC.oid),
        "dec": (["ORU", "R01", "ORU_R01"], codes.PCD_01_DEC.oid),
        "acm": (["ORU", "R40", "ORU_R40"], codes.PCD_04_ACM.oid),
        "ras": (["RAS", "O17", "RAS_O17"], None),
    }
    seen = set()
    for _kind, ev, related in CASES:
        for message in build_messages(ev, CONFIG, at=AT, related=related).messages:
            m = parsed(message)
            types, oid = expected[message.kind]
            assert m.msh.components(9) == types
            assert [p.oid for p in m.profile_ids()] == ([] if oid is None else [oid])
            seen.add(message.kind)
    assert seen == KINDS


# -- IPEC (PCD-10) ------------------------------------------------------------------------------


def test_delivery_start_has_the_structure_codes_and_units_of_the_ihe_example() -> None:
    """Against example 12 (TF-2 M.1.2.2). Differences on purpose: the generic pump MDS/VMD codes
    (69985/69986: the gateway does not know whether a pump is an LVP or a syringe driver, example 12
    says LVP 70049/70050), and no row the event does not hold (program delivery mode 158008,
    remaining volume 157872 and time 157916, care area 184516, weight 68063, library version 184517).
    Example 12's own defect (a leading space in MSH-21's OID) is not copied."""
    ours = parsed(one(ipec_messages(event(EventType.INFUSION_STARTED), CONFIG, at=AT)))
    ref = example(IPEC_EXAMPLE)
    assert ours.msh.components(9) == ref.msh.components(9) == ["ORU", "R42", "ORU_R01"]
    assert ours.msh.field(21) == "IHE_PCD_010^IHE PCD^1.3.6.1.4.1.19376.1.6.4.10^ISO"
    assert ref.profile_ids()[0].oid == codes.PCD_10_IPEC.oid  # the parser trims the example's space
    assert [s.name for s in ours.segments_in_order][:4] == ["MSH", "PID", "OBR", "OBX"]
    # OBR-2 the PCD-03 order, as the example's AB12345^PCD-03; OBR-4 the drug.
    assert ours.segment("OBR").field(2) == "AB12345^PCD-03" == ref.segment("OBR").field(2)  # type: ignore[union-attr]
    assert ours.segment("OBR").field(4) == "^fentaNYL"  # type: ignore[union-attr]
    # The event rows: MDC_ATTR_EVT_COND = MDC_EVT_PUMP_DELIV_START, source = the fluid source.
    for m in (ours, ref):
        assert obx_by_code(m, 68487)[0].field(5) == "197288^MDC_EVT_PUMP_DELIV_START^MDC"
        assert obx_by_code(m, 68488)[0].component(5) == "1.1.2.0"
    # The same containment: device rows at the same places, metrics under them.

    def device_rows(m: Hl7Message) -> list[str]:
        return [s.field(4) for s in obx_rows(m) if s.field(11) == "X"]

    assert device_rows(ours) == device_rows(ref) == ["1.0.0.0", "1.1.0.0", "1.1.1.0", "1.1.2.0"]
    ref_rows = {s.component(3, 1): s for s in obx_rows(ref)}
    for row in obx_rows(ours):
        code = row.component(3, 1)
        assert code in ref_rows or code in ("69985", "69986"), f"{code} is not in example 12"
        if code in ref_rows and row.field(11) != "X":
            theirs = ref_rows[code]
            assert row.field(4).rsplit(".", 1)[0] == theirs.field(4).rsplit(".", 1)[0], code  # same parent
            assert row.field(2) == theirs.field(2), code  # same value type
            if code not in ("157924", "157760"):  # dose rate, concentration: units follow the drug
                assert row.field(6) == theirs.field(6), code  # same unit, to the letter
    # Values exactly as the payload has them: "4.00" keeps its precision (TF-2 B.8.5 OBX-5).
    assert obx_by_code(ours, 157784)[0].field(5) == "4.00"
    assert obx_by_code(ours, 158014)[0].field(5) == "4.00"
    assert obx_by_code(ours, 157884)[0].field(5) == "50"
    assert obx_by_code(ours, 157993)[0].field(5) == "0.0"
    assert obx_by_code(ours, 184514)[0].field(5) == "fentaNYL"
    # Units without an MDC code in our table are sent in UCUM only, never with a guessed MDC code.
    assert obx_by_code(ours, 157760)[0].field(6) == "ug/mL^ug/mL^UCUM"
    assert obx_by_code(ours, 157924)[0].field(6) == "ug/h^ug/h^UCUM"
    # OBX-18: the pump (named by its gateway) on the MDS row, the channel on the VMD row.
    assert obx_rows(ours)[0].field(18) == "pump-a^gw-ward7"
    assert obx_by_code(ours, 69986)[0].field(18) == "pump-a/1^gw-ward7"


def test_ipec_keeps_the_time_the_event_happened_not_the_send_time() -> None:
    """TF-2 App. M: events are buffered while offline and keep the time they happened."""
    m = parsed(one(ipec_messages(event(EventType.INFUSION_STARTED), CONFIG, at=AT)))
    assert m.msh.field(7) == "20261122040000+0000"
    assert m.segment("OBR").field(7) == "20261122031916+0000"  # type: ignore[union-attr]
    values = [s for s in obx_rows(m) if s.field(11) != "X"]
    assert values
    assert {s.field(14) for s in values} == {"20261122031916+0000"}


def test_stop_and_complete_go_by_reference_id_unless_their_codes_are_configured() -> None:
    stop = parsed(one(ipec_messages(event(EventType.INFUSION_STOPPED), CONFIG, at=AT)))
    comp = parsed(one(ipec_messages(event(EventType.INFUSION_COMPLETED), CONFIG, at=AT)))
    assert obx_by_code(stop, 68487)[0].field(5) == "^MDC_EVT_PUMP_DELIV_STOP^MDC"
    assert obx_by_code(comp, 68487)[0].field(5) == "^MDC_EVT_PUMP_DELIV_COMP^MDC"
    # Made-up codes in the MDC event partition, for this test only (not the real ones).
    configured = PcdConfig(
        CONFIG.sender, CONFIG.receiver, ipec_codes=IpecCodes(deliv_stop=196701, deliv_comp=196702)
    )
    stop = parsed(one(ipec_messages(event(EventType.INFUSION_STOPPED), configured, at=AT)))
    assert obx_by_code(stop, 68487)[0].field(5) == "196701^MDC_EVT_PUMP_DELIV_STOP^MDC"
    with pytest.raises(ConfigError, match=r"deliv_stop.*partition 3"):
        IpecCodes(deliv_stop=157784)  # a flow code, not an event


def test_a_pause_is_a_delivery_stop_and_states_no_rate_the_pump_is_not_running_at() -> None:
    """TF-2 Table M.1.2.1-4, "pausing the running infusion": DELIV_STOP, not delivering, with a reason."""
    m = parsed(one(ipec_messages(event(EventType.INFUSION_PAUSED), CONFIG, at=AT)))
    assert obx_by_code(m, 68487)[0].field(5) == "^MDC_EVT_PUMP_DELIV_STOP^MDC"
    assert obx_by_code(m, 184519)[0].field(5) == "^pump-status-not-infusing"
    assert obx_by_code(m, 158005)[0].field(5) == "^pump-delivery-status-not-delivering"
    assert obx_by_code(m, 158006)[0].field(5) == "^pump-stopped-not-specified"
    assert obx_by_code(m, 157784) == []  # programmed rate: the paused pump's rate is a leftover
    assert obx_by_code(m, 158014) == []  # current flow
    assert obx_by_code(m, 157993)[0].field(5) == "0.0"


def test_completion_into_kvo_is_transitioning() -> None:
    m = parsed(one(ipec_messages(event(EventType.INFUSION_COMPLETED), CONFIG, at=AT)))
    assert obx_by_code(m, 158005)[0].field(5) == "^pump-delivery-status-transitioning"
    assert obx_by_code(m, 157993)[0].field(5) == "50.0"
    assert obx_by_code(m, 157784) == []  # the KVO rate is not the programmed rate
    assert obx_by_code(m, 158014)[0].field(5) == "4.00"  # it is what flows now


def test_a_rate_change_is_a_stop_at_the_old_rate_then_a_start_at_the_new() -> None:
    """TF-2 Table M.1.2.1-4, "Rate Change (e.g., titration) while running"."""
    built = ipec_messages(event(EventType.INFUSION_RATE_CHANGED), CONFIG, at=AT)
    assert isinstance(built, tuple)
    stop, start = (parsed(m) for m in built)
    assert [m.control_id for m in built] == [
        f"{event(EventType.INFUSION_RATE_CHANGED).id}-I{i}" for i in (0, 1)
    ]
    assert obx_by_code(stop, 68487)[0].field(5) == "^MDC_EVT_PUMP_DELIV_STOP^MDC"
    assert obx_by_code(stop, 158005)[0].field(5) == "^pump-delivery-status-transitioning"
    assert obx_by_code(stop, 157784)[0].field(5) == "2.00"
    assert obx_by_code(stop, 157924) == []  # the old dose rate is not in the event
    assert obx_by_code(start, 68487)[0].field(5) == "197288^MDC_EVT_PUMP_DELIV_START^MDC"
    assert obx_by_code(start, 157784)[0].field(5) == "4.00"
    assert obx_by_code(start, 157924)[0].field(5) == "200"


@pytest.mark.parametrize(
    "type_",
    [
        EventType.INFUSION_BOLUS,
        EventType.INFUSION_UNVERIFIED,
        EventType.LINK_LOST,
        EventType.LINK_RESTORED,
        EventType.PUMP_IDENTIFIED,
        EventType.GATEWAY_STARTED,
        EventType.DELIVERY_REJECTED,
        EventType.ORDER_RECEIVED,
    ],
)
def test_events_the_profiles_do_not_name_become_nothing(type_: EventType) -> None:
    assert messages_for(event(type_), CONFIG, at=AT) == []
    assert build_messages(event(type_), CONFIG, at=AT).skipped == ()


def test_an_unknown_event_type_becomes_nothing() -> None:
    assert messages_for(event(EventType.INFUSION_STARTED, type="infusion.teleported"), CONFIG, at=AT) == []


# -- the patient --------------------------------------------------------------------------------


@pytest.mark.parametrize("patient", [None, "", "   "])
def test_without_a_patient_nothing_is_documented_to_the_record(patient: str | None) -> None:
    """HL7 2.6 makes PID-3 required; any stand-in id could be filed to a real patient."""
    skipped: list[Skipped] = []
    for ev in (
        event(EventType.INFUSION_STARTED, patient=patient),
        event(EventType.INFUSION_COMPLETED, patient=patient),
    ):
        plan = build_messages(ev, CONFIG, at=AT, related=Related(infusion_start=START))
        assert plan.messages == ()
        skipped += plan.skipped
    assert [s.kind for s in skipped] == ["ipec", "ipec", "ras"]
    assert all("names no patient" in s.reason for s in skipped)
    dec = dec_message(event(EventType.CHANNEL_STATE, patient=patient), CONFIG, at=AT)
    assert isinstance(dec, Skipped)


def test_an_alarm_without_a_patient_is_still_sent_without_pid() -> None:
    """TF-2 B.5.1 wants PID with PID-31 Y then; HL7 2.6 (and hl7apy) refuse a PID without PID-3, and
    ORU allows the patient group to be absent: the alarm goes by its device (OBX-18)."""
    message = one(acm_message(event(EventType.ALARM_RAISED, patient=None), CONFIG, at=AT))
    validate_strict(message.data)
    m = parsed(message)
    assert m.segment("PID") is None
    assert obx_rows(m)[0].field(18) == "pump-a/1^gw-ward7"


def test_pid_carries_the_id_as_scanned_with_an_unknown_name() -> None:
    """TF-2 B.5 PID-5: "If no name is available, the name type code should be U"."""
    m = parsed(one(ipec_messages(event(EventType.INFUSION_STARTED), CONFIG, at=AT)))
    pid = m.segment("PID")
    assert pid is not None
    assert pid.field(3) == "MRN-0042^^^HOSP^MR"
    assert pid.field(5) == "^^^^^^U"
    assert m.segment("PV1") is None  # no location configured: no PV1


# -- ACM (PCD-04) -------------------------------------------------------------------------------


def test_alarm_start_has_the_facets_of_the_ihe_example_without_its_defects() -> None:
    """Against example 09 (TF-2 E.3.2, B. Braun occlusion start). Its defects, not copied: MSH-21's
    OID ``…1.6.4.4.1`` is not the table's ``…1.6.1.4.1``; MSH-5 has spaces around the EUI-64; the
    last OBX-3 lacks ``^MDC``; that OBX has only 5 empty fields, so its status ``F`` sits in OBX-10,
    not OBX-11, and hl7apy STRICT refuses the example for it."""
    ours = parsed(one(acm_message(event(EventType.ALARM_RAISED), CONFIG, at=AT)))
    ref = example(ACM_EXAMPLE)
    with pytest.raises(Hl7Error, match="OBX"):
        validate_strict(ACM_EXAMPLE.read_bytes())
    assert ours.msh.components(9) == ref.msh.components(9) == ["ORU", "R40", "ORU_R40"]
    assert ours.profile_ids()[0].oid == codes.PCD_04_ACM.oid != ref.profile_ids()[0].oid
    assert ours.segment("OBR").field(4) == ref.segment("OBR").field(4) == "196616^MDC_EVT_ALARM^MDC"  # type: ignore[union-attr]
    # The five facets of the example, in its order, five-level OBX-4 ending in the facet number.
    facets = ["196616", "68480", "68481", "68482", "68483"]
    assert [s.component(3, 1) for s in obx_rows(ref)] == facets
    assert [s.component(3, 1) for s in obx_rows(ours)][:5] == facets
    assert [s.field(4).split(".")[-1] for s in obx_rows(ours)] == ["1", "2", "3", "4", "5", "7", "8"]
    assert all(len(s.field(4).split(".")) == 5 for s in obx_rows(ours))
    # The occlusion code and its original text, as the example writes it (CWE-9).
    assert obx_rows(ours)[0].field(5) == "196940^MDC_EVT_FLUID_LINE_OCCL^MDC^^^^^^occlusion-downstream"
    assert obx_rows(ref)[0].field(5).startswith("196940^MDC_EVT_FLUID_LINE_OCCL^MDC^")
    assert obx_by_code(ours, 68481)[0].field(5) == obx_by_code(ref, 68481)[0].field(5) == "start"
    assert obx_by_code(ours, 68482)[0].field(5) == obx_by_code(ref, 68482)[0].field(5) == "active"
    assert {s.field(11) for s in obx_rows(ours)} == {"F"}  # TF-2 B.8.6: "the only possible value is F"
    assert obx_rows(ref)[-1].field(10) == "F"  # the example's defect
    # The channel is the source (VMD), the alarm time is OBX-14 of the event identification row.
    assert obx_by_code(ours, 68480)[0].field(5) == "69986^MDC_DEV_PUMP_INFUS_VMD^MDC"
    assert obx_rows(ours)[0].field(14) == "20261122031916+0000"
    assert obx_by_code(ours, 68485)[0].field(5) == "ST"  # a technical alarm
    assert obx_by_code(ours, 68546)[0].field(5) == "occlusion-downstream (pump pump-a channel 1)"
    assert obx_by_code(ours, 68483)[0].field(5) == ""  # inactivation state not known ("may be empty")
    assert obx_by_code(ours, 68484) == []  # no priority unless configured


def test_alarm_identifiers_tie_the_end_to_the_start() -> None:
    """TF-2 B.7: OBR-3 identifies each indication; OBR-29 the alarm, "the same value of OBR-29 will be
    sent ... concerning the start, end"."""
    raised = event(EventType.ALARM_RAISED, seq=4)
    cleared = event(EventType.ALARM_CLEARED, seq=9)
    start = parsed(one(acm_message(raised, CONFIG, at=AT)))
    end = parsed(one(acm_message(cleared, CONFIG, at=AT, alert_start=raised)))
    obr_start, obr_end = start.segment("OBR"), end.segment("OBR")
    assert obr_start is not None
    assert obr_end is not None
    assert obr_start.field(3) == f"{raised.id}-A0^PUMPGW"
    assert obr_end.field(3) == f"{cleared.id}-A0^PUMPGW"
    assert obr_start.subcomponent(29, 2, 1) == obr_end.subcomponent(29, 2, 1) == f"{raised.id}-A0"
    assert obr_end.subcomponent(29, 2, 2) == "PUMPGW"
    assert obx_by_code(end, 68481)[0].field(5) == "end"
    assert obx_by_code(end, 68482)[0].field(5) == "inactive"
    # OBR-7: when the report was packaged (TF-2 B.7.1); the alarm time is in OBX-14.
    assert obr_end.field(7) == "20261122040000+0000"
    # No start found, or what was found is not a raise before it: no parent rather than a wrong one.
    for wrong in (None, event(EventType.ALARM_CLEARED, seq=5), event(EventType.ALARM_RAISED, seq=12)):
        orphan = parsed(one(acm_message(cleared, CONFIG, at=AT, alert_start=wrong)))
        assert orphan.segment("OBR").field(29) == ""  # type: ignore[union-attr]


def test_an_alarm_without_a_known_code_goes_by_its_name_and_priority_only_where_configured() -> None:
    ev = event(EventType.ALARM_RAISED, {"alarm": "air-in-line"})
    m = parsed(one(acm_message(ev, CONFIG, at=AT)))
    assert obx_rows(m)[0].field(3) == "196616^MDC_EVT_ALARM^MDC"
    assert obx_rows(m)[0].field(5) == "^^^^^^^^air-in-line"
    assert obx_by_code(m, 68484) == []
    site = PcdConfig(
        CONFIG.sender,
        CONFIG.receiver,
        messages=frozenset({"acm"}),
        alarm_terms={"air-in-line": AlarmTerm(priority="PH")},
    )
    message = one(acm_message(ev, site, at=AT))
    validate_strict(message.data)
    assert obx_by_code(parsed(message), 68484)[0].field(5) == "PH"
    assert obx_by_code(parsed(message), 68484)[0].field(4) == "1.1.0.0.6"


def test_a_pump_level_alarm_has_the_pump_as_its_source() -> None:
    m = parsed(one(acm_message(event(EventType.ALARM_RAISED, channel=None), CONFIG, at=AT)))
    assert obx_by_code(m, 68480)[0].field(5) == "69985^MDC_DEV_PUMP_INFUS_MDS^MDC"
    assert obx_rows(m)[0].field(4) == "1.0.0.0.1"
    assert obx_rows(m)[0].field(18) == "pump-a^gw-ward7"


# -- DEC (PCD-01) -------------------------------------------------------------------------------


def test_dec_reports_the_channel_without_event_rows() -> None:
    m = parsed(one(dec_message(event(EventType.CHANNEL_STATE), CONFIG, at=AT)))
    assert obx_by_code(m, 68487) == []
    assert obx_by_code(m, 184519)[0].field(5) == "^pump-status-infusing"
    assert obx_by_code(m, 157784)[0].field(5) == "4.00"
    assert m.segment("OBR").field(7) == "20261122031916+0000"  # type: ignore[union-attr]
    idle = event(
        EventType.CHANNEL_STATE,
        {"from": "infusing", "to": "idle", "rate_ml_h": "4.00", "volume_infused_ml": "3.5", "drug": None},
    )
    m = parsed(one(dec_message(idle, CONFIG, at=AT)))
    assert obx_by_code(m, 157784) == []
    assert obx_by_code(m, 158005)[0].field(5) == "^pump-delivery-status-not-delivering"
    assert m.segment("OBR").field(4) == "999999^Medication Unknown"  # type: ignore[union-attr]  # TF-2 B.7 OBR-4


def test_dec_goes_out_for_state_and_rate_changes_only() -> None:
    """Polls are not events: a state change and a rate change are the only records of readings; the
    other infusion events come with a state change, which already gives a DEC."""
    config = PcdConfig(CONFIG.sender, CONFIG.receiver, messages=frozenset({"dec"}))
    with_dec = {t for t in SAMPLES if messages_for(event(t), config, at=AT)}
    assert with_dec == {EventType.CHANNEL_STATE, EventType.INFUSION_RATE_CHANGED}


# -- RAS^O17 ------------------------------------------------------------------------------------


def test_a_completed_infusion_is_one_administration_from_its_start() -> None:
    done = event(EventType.INFUSION_COMPLETED, time="2026-11-22T15:49:16.000Z", seq=20)
    message = one(ras_message(done, CONFIG, at=AT, infusion_start=START))
    m = parsed(message)
    rxa = m.segment("RXA")
    assert rxa is not None
    assert rxa.field(3) == "20261122031916+0000"  # when it started
    assert rxa.field(4) == "20261122154916+0000"  # when it completed
    assert rxa.field(5) == "^fentaNYL"
    assert rxa.field(6) == "40.0"  # 50.0 mL on the counter at the end, 10.0 at the start
    assert rxa.components(7)[:3] == ["mL", "mL", "UCUM"]
    assert rxa.field(10) == "RN-17"
    assert rxa.field(12) == ""  # not a rate
    assert rxa.field(20) == "CP"
    assert m.segment("RXR").is_null(1)  # type: ignore[union-attr]  # the route is not known
    orc = m.segment("ORC")
    assert orc is not None
    assert (orc.field(1), orc.field(2), orc.field(3)) == ("RE", "AB12345^PCD-03", f"{done.id}-R0^PUMPGW")


@pytest.mark.parametrize(("end_volume", "status", "given"), [("12.5", "PA", "2.5"), ("10.0", "NA", "0.0")])
def test_a_stopped_infusion_is_partial_or_not_administered(end_volume: str, status: str, given: str) -> None:
    stopped = event(
        EventType.INFUSION_STOPPED, {**SAMPLES[EventType.INFUSION_STOPPED], "volume_infused_ml": end_volume}
    )
    rxa = parsed(one(ras_message(stopped, CONFIG, at=AT, infusion_start=START))).segment("RXA")
    assert rxa is not None
    assert (rxa.field(6), rxa.field(20)) == (given, status)


@pytest.mark.parametrize(
    ("start", "reason"),
    [
        (None, "no infusion.started"),
        (event(EventType.INFUSION_COMPLETED, seq=5), "already documented by infusion.completed"),
        (event(EventType.INFUSION_STARTED, seq=5, channel=2), "no infusion.started"),
        (event(EventType.INFUSION_STARTED, seq=50), "no infusion.started"),
        (event(EventType.INFUSION_STARTED, seq=5, patient="MRN-9999"), "another patient"),
        (
            event(
                EventType.INFUSION_STARTED,
                {**SAMPLES[EventType.INFUSION_STARTED], "volume_infused_ml": "60.0"},
                seq=5,
            ),
            "counter went down",
        ),
        (
            event(
                EventType.INFUSION_STARTED,
                {**SAMPLES[EventType.INFUSION_STARTED], "volume_infused_ml": None},
                seq=5,
            ),
            "volume counter",
        ),
    ],
)
def test_an_administration_that_cannot_be_stated_exactly_is_not_sent(
    start: Event | None, reason: str
) -> None:
    built = ras_message(event(EventType.INFUSION_COMPLETED), CONFIG, at=AT, infusion_start=start)
    assert isinstance(built, Skipped)
    assert reason in built.reason


def test_related_wanted_names_what_ras_and_acm_need() -> None:
    wanted = related_wanted(event(EventType.INFUSION_STOPPED), CONFIG)
    assert wanted is not None
    assert wanted.slot == "infusion_start"
    assert wanted.types == {"infusion.started", "infusion.completed", "infusion.stopped"}
    assert wanted.matches(START, event(EventType.INFUSION_STOPPED))
    assert not wanted.matches(
        event(EventType.INFUSION_STARTED, seq=11), event(EventType.INFUSION_STOPPED, seq=10)
    )
    assert not wanted.matches(
        event(EventType.INFUSION_STARTED, seq=3, gateway="other"), event(EventType.INFUSION_STOPPED)
    )
    alarm = related_wanted(event(EventType.ALARM_CLEARED), CONFIG)
    assert alarm is not None
    assert (alarm.slot, alarm.alarm) == ("alarm_start", "occlusion-downstream")
    assert not alarm.matches(
        event(EventType.ALARM_RAISED, {"alarm": "air-in-line"}, seq=3), event(EventType.ALARM_CLEARED)
    )
    ipec_only = PcdConfig(CONFIG.sender, CONFIG.receiver, messages=frozenset({"ipec"}))
    assert related_wanted(event(EventType.INFUSION_STOPPED), ipec_only) is None
    assert related_wanted(event(EventType.ALARM_CLEARED), ipec_only) is None


# -- ids, config, escaping, refusals -------------------------------------------------------------


def test_control_ids_are_the_same_on_every_build_and_unique_per_message() -> None:
    """MSH-10, and OBR-3 (the report's filler number) with it: one per message, none shared by the
    three reports of a rate change."""
    ev = event(EventType.INFUSION_RATE_CHANGED)
    first = build_messages(ev, CONFIG, at=AT)
    again = build_messages(ev, CONFIG, at=AT + timedelta(hours=5))
    fillers = [parsed(m).segment("OBR").component(3, 1) for m in first.messages]  # type: ignore[union-attr]
    assert fillers == [m.control_id for m in first.messages]
    assert [m.control_id for m in first.messages] == [m.control_id for m in again.messages]
    assert [m.control_id for m in first.messages] == [f"{ev.id}-I0", f"{ev.id}-I1", f"{ev.id}-D0"]
    assert first.messages[0].data != again.messages[0].data  # MSH-7 is when it was built
    assert control_id(ev, "acm") != control_id(ev, "ras")


def test_a_config_naming_an_unknown_message_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="messages"):
        PcdConfig(CONFIG.sender, CONFIG.receiver, messages=frozenset({"ipec", "adt"}))


def test_a_concentration_that_is_not_a_ucum_quantity_is_refused_naming_the_row() -> None:
    payload = {**SAMPLES[EventType.INFUSION_STARTED], "concentration": "50 mcg/mL"}
    with pytest.raises(Hl7Error, match=r"MDC_CONC_DRUG.*concentration '50 mcg/mL'"):
        ipec_messages(event(EventType.INFUSION_STARTED, payload), CONFIG, at=AT)


def test_a_payload_that_does_not_fit_its_type_is_refused() -> None:
    with pytest.raises(Hl7Error, match=r"not a valid infusion\.started payload"):
        ipec_messages(event(EventType.INFUSION_STARTED, {"state": "infusing"}), CONFIG, at=AT)


# Text as a pump or a wristband may hold it: any character inside, delimiters, the HL7 null and
# control characters too (the reader strips white space around a value, so the ends are letters).
_TEXT = st.builds(
    lambda a, middle, b: a + middle + b,
    st.sampled_from("aZ0"),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    st.sampled_from("bY9"),
) | st.just('""')


@settings(max_examples=150, deadline=None)
@given(drug=_TEXT, patient=_TEXT, alarm=_TEXT)
def test_any_text_survives_the_round_trip(drug: str, patient: str, alarm: str) -> None:
    payload = {**SAMPLES[EventType.INFUSION_STARTED], "drug": drug}
    m = parsed(one(ipec_messages(event(EventType.INFUSION_STARTED, payload, patient=patient), CONFIG, at=AT)))
    assert m.segment("OBR").component(4, 2) == drug  # type: ignore[union-attr]
    assert obx_by_code(m, 184514)[0].component(5) == drug
    assert m.segment("PID").component(3, 1) == patient  # type: ignore[union-attr]
    a = parsed(one(acm_message(event(EventType.ALARM_RAISED, {"alarm": alarm}), CONFIG, at=AT)))
    assert obx_rows(a)[0].component(5, 9) == alarm
