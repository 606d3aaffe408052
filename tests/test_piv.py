"""PIV (PCD-03) orders: RGV^O15 read into the domain Order, refused with a code and the field when a
value cannot be mapped unambiguously, and built for the emulated eMAR (hl7/piv.py).

Golden inputs: ``shared/reference/hl7-examples/03`` (dopamine 400 mg in 250 mL at 10 ug/kg/min,
VTBI 250 mL, 85 kg, pump A0001) and ``06`` (normal saline 500 mL at 13.3 mL/h), TF-2 Rev 10 draft
E.2.3. Their documented defects (SOURCES.md) and where each is caught:

- ORC-9 missing: read as ``ordered_at=None``; ``check_order`` refuses it (9022) by default;
- MSH-21 without the OID: accepted unless ``require_profile_oid`` (then refused, 200 at MSH-21);
- MSH-12 2.5, MSH-19 ISO659, OBX-11 missing: not the reader's business; validate_strict reports
  them (tests/test_hl7_ack.py);
- RXG-7 trailing space, RXG-16/18 MDC codes under a UCUM label, OBX-18 deprecated form: tolerated
  and read exactly (the mislabelled code is cross-checked against its text).
"""

from __future__ import annotations

import contextlib
from datetime import timedelta, timezone
from decimal import Decimal

import pytest
from hl7_samples import AT, EMAR, GATEWAY, dopamine, example, orders, q
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pumpgw.gateway.dose import Concentration
from pumpgw.gateway.errors import Hl7Error
from pumpgw.gateway.orders import (
    Drug,
    Order,
    OrderAction,
    OrderPolicy,
    OrderRefused,
    OrderSource,
    OrderStep,
    PivError,
    check_order,
)
from pumpgw.hl7 import codes
from pumpgw.hl7.message import parse_message
from pumpgw.hl7.piv import UnitProblem, build_rgv_o15, read_rgv_o15, resolve_unit
from pumpgw.hl7.validate import Hl7ValidationError, validate_strict

EX03_MSH = example("03").split(b"\r")[0].decode()
PIV_OID = codes.PCD_03_PIV.oid


def read(data: bytes | str, **options: object) -> Order:
    return read_rgv_o15(parse_message(data), **options)  # type: ignore[arg-type]


def refused(data: bytes | str, **options: object) -> OrderRefused:
    with pytest.raises(OrderRefused) as info:
        read(data, **options)
    return info.value


def problem_codes(error: OrderRefused) -> list[tuple[str, str]]:
    return [(str(p.code), p.element) for p in error.problems]


def rgv(*segments: str, msh: str = EX03_MSH) -> str:
    """An RGV^O15 with the MSH of example 03 and the given segments."""
    return "\r".join([msh, *segments]) + "\r"


PID = "PID|||98765^^^IHE^PI||Doe^John^^^^^L"
ORC = "ORC|RE|12345|||||||20260101120000+0100||||||||||N0001"
RXR = "RXR|IV||IVP|IV"
PUMP_OBX = "OBX|1||69986^MDC_DEV_PUMP_INFUS_VMD^MDC||||||||X|||||||PUMP-1/2"


def rxg(**fields: str) -> str:
    """RXG with RXG-1 = 1, RXG-4 = dopamine and the given fields (``f5="250"``)."""
    values = [""] * 24
    values[0], values[3] = "1", "1234^Dopamine"
    for key, value in fields.items():
        values[int(key[1:]) - 1] = value
    return "RXG|" + "|".join(values)


def order_with(*give: str, orc: str = ORC, pid: str = PID) -> str:
    return rgv(pid, orc, *give)


# --- the IHE examples ----------------------------------------------------------------------------


def test_dopamine_example_maps_to_the_order_it_describes() -> None:
    """hl7-examples/03 (TF-2 Rev 10 draft E.2.3 ex. 1)."""
    order = read(example("03"))
    assert order.source is OrderSource.HL7
    assert (order.order_id, order.patient_id, order.patient_name) == ("12345", "98765", "Doe, John")
    assert order.action is OrderAction.NEW
    assert order.status == "active"
    assert order.drug == Drug("1234", None, "Dopamine")
    assert order.concentration == Concentration(q("400 mg"), q("250 mL"))
    assert order.container_volume == q("250 mL")
    assert order.dose_rate == q("10 ug/kg/min")
    assert order.rate is None
    assert order.dose is None
    assert order.vtbi == q("250 mL")
    assert order.weight == q("85.0 kg")
    assert (order.pump_id, order.channel) == ("A0001", None)  # the deprecated EI-3 form
    assert order.route == "IV"
    assert order.ordered_by == "N0001"
    assert order.ordered_at is None  # the example's defect: no ORC-9
    assert order.received_from == "1"
    assert order.later_steps == ()


def test_saline_example_maps_to_a_rate_without_concentration() -> None:
    """hl7-examples/06 (TF-2 Rev 10 draft E.2.3 ex. 2): `13.3|3122^mL/h^UCUM^265266^...`."""
    order = read(example("06"))
    assert order.drug == Drug("5678", None, "Normal Saline")
    assert order.rate == q("13.3 mL/h")
    assert order.dose_rate is None
    assert order.vtbi == q("500 mL")
    assert order.concentration is None
    assert order.container_volume is None
    assert order.weight is None
    assert order.pump_id == "A0001"


@pytest.mark.parametrize("number", ["03", "06"])
def test_examples_are_refused_as_possibly_stale_by_default_for_want_of_orc9(number: str) -> None:
    """hl7-examples/03 and 06 lack ORC-9 (required by TF Table B.9-1): read, then refused (9022)
    by check_order's default policy; accepted when the policy does not require the time."""
    order = read(example(number))
    pumps = {"A0001": frozenset({"1"})}
    problems = check_order(order, now=AT, policy=OrderPolicy(), pumps=pumps)
    assert [(p.code, p.element) for p in problems] == [(PivError.STALE, "ordered_at")]
    lenient = OrderPolicy(require_ordered_at=False)
    assert check_order(order, now=AT, policy=lenient, pumps=pumps) == []


def test_profile_oid_is_required_only_when_configured() -> None:
    """hl7-examples/03 names IHE_PCD_PIV_001 with no OID in MSH-21."""
    error = refused(example("03"), require_profile_oid=True)
    assert problem_codes(error) == [("200", "MSH-21")]
    assert "names profile OID none" in str(error)
    with_oid = example("03").replace(b"IHE_PCD_PIV_001", f"IHE_PCD_PIV_001^IHE PCD^ {PIV_OID} ^ISO".encode())
    assert read(with_oid, require_profile_oid=True).order_id == "12345"
    other = frozenset({"1.2.3"})
    assert problem_codes(refused(with_oid, require_profile_oid=True, accepted_oids=other)) == [
        ("200", "MSH-21")
    ]


@pytest.mark.parametrize(("number", "kind"), [("01", "ORU^R01"), ("05", "ACK^O15"), ("08", "RRG^O16"),
                                              ("09", "ORU^R40"), ("12", "ORU^R42")])  # fmt: skip
def test_other_messages_are_not_orders(number: str, kind: str) -> None:
    """hl7-examples 01, 05, 08, 09, 12 parse, and reading one as an order says what it is."""
    error = refused(example(number))
    assert problem_codes(error) == [("200", "MSH-9")]
    assert kind in str(error)
    assert "not an RGV^O15" in str(error)


# --- units -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "ucum"),
    [
        (["263762", "MDC_DIM_MILLI_L", "MDC", "mL", "mL", "UCUM"], "mL"),
        (["mL", "mL", "UCUM", "263762", "MDC_DIM_MILLI_L", "MDC"], "mL"),
        (["3475", "ug/kg/min", "UCUM", "265619", "MDC_DIM_MICRO_G_PER_KG_PER_MIN", "MDC"], "ug/kg/min"),
        (["1746", "mg", "UCUM", "263890", "MDC_DIM_MILLI_G", "MDC"], "mg"),
        (["kg", "kg", "UCUM", "263875", "MDC_DIM_KILO_G", "MDC"], "kg"),
        (["263875", "MDC_DIM_KILO_G", "MDC"], "kg"),
        (["", "MDC_DIM_KILO_G", "MDC"], "kg"),
        (["3122", "MDC_DIM_MILLI_L_PER_HR", "MDC"], "mL/h"),  # context-sensitive under MDC
        (["ug/h", "ug/h", "UCUM"], "ug/h"),  # UCUM the MDC table lacks
        (["999999", "MDC_DIM_UNKNOWN", "MDC", "ug/h", "ug/h", "UCUM"], "ug/h"),  # MDC alternate unknown
        (["mL"], "mL"),  # unlabelled but unambiguous UCUM
        (["[iU]/h", "", "UCUM"], "[iU]/h"),
    ],
)
def test_unit_fields_resolve_to_ucum(parts: list[str], ucum: str) -> None:
    assert resolve_unit(parts) == ucum


@pytest.mark.hazard("HAZ-008")
@pytest.mark.parametrize(
    ("parts", "said"),
    [
        (["263762", "MDC_DIM_MILLI_L", "MDC", "mg", "mg", "UCUM"], "means mL but mg^mg^UCUM means mg"),
        (["3475", "mg/h", "UCUM"], "means ug/kg/min"),  # mislabelled code contradicts its text
        (["263890", "MDC_DIM_MICRO_G", "MDC"], "is MDC_DIM_MILLI_G, not MDC_DIM_MICRO_G"),
        (["263891", "MDC_DIM_MILLI_G", "MDC"], "263891 is not MDC_DIM_MILLI_G"),
        (["ml/hr", "ml/hr", "UCUM"], "'ml/hr'"),
        (["mcg/kg/min", "", "UCUM"], "case-sensitive"),
        (["ml", "", "ISO+"], "neither MDC nor UCUM"),
        (["999999", "MDC_DIM_NOPE", "MDC"], "not an MDC unit"),
        ([], "no unit"),
    ],
)
def test_contradicting_or_unknown_units_are_refused(parts: list[str], said: str) -> None:
    with pytest.raises(UnitProblem, match=said.replace("^", r"\^")):
        resolve_unit(parts)


@pytest.mark.hazard("HAZ-008")
def test_a_unit_mismatch_refuses_the_order_with_9009_naming_the_field_and_both_units() -> None:
    data = order_with(
        rxg(f15="10", f16="265619^MDC_DIM_MICRO_G_PER_KG_PER_MIN^MDC^mg/h^mg/h^UCUM"), RXR, PUMP_OBX
    )
    error = refused(data)
    assert problem_codes(error) == [(PivError.UNITS_MISMATCH, "RXG-16")]
    assert "ug/kg/min" in str(error)
    assert "mg/h" in str(error)


@pytest.mark.hazard("HAZ-008")
@pytest.mark.parametrize(
    ("fields", "element", "said"),
    [
        ({"f5": "250", "f7": "mg^mg^UCUM"}, "RXG-7", "not a volume"),  # VTBI in mg
        ({"f15": "5", "f16": "mg/mL^mg/mL^UCUM"}, "RXG-16", "not a rate"),
        ({"f23": "50", "f24": "mg^mg^UCUM"}, "RXG-24", "not a volume"),
        ({"f17": "5", "f18": "mL^mL^UCUM", "f23": "50", "f24": "mL^mL^UCUM"}, "RXG-18", "amount of drug"),
    ],
)
def test_a_unit_of_the_wrong_kind_is_refused(fields: dict[str, str], element: str, said: str) -> None:
    error = refused(order_with(rxg(**fields), RXR, PUMP_OBX))
    assert problem_codes(error) == [(PivError.UNITS_MISMATCH, element)]
    assert said in str(error)


def test_a_value_without_a_unit_is_refused() -> None:
    error = refused(order_with(rxg(f15="10"), RXR, PUMP_OBX))
    assert problem_codes(error) == [("101", "RXG-16")]


@pytest.mark.parametrize("number", ["1,5", "10 mg", "1e3", "-5", "five", "1.2.3", "+", "١٢", "1³"])
def test_a_number_that_is_not_a_plain_decimal_is_refused_naming_the_field(number: str) -> None:
    error = refused(order_with(rxg(f15=number, f16="mL/h^mL/h^UCUM"), RXR, PUMP_OBX))
    assert problem_codes(error) == [("102", "RXG-15")]
    assert repr(number) in str(error) or number in str(error)


@pytest.mark.parametrize(("number", "value"), [("13.3", "13.3"), (".5", "0.5"), ("5.", "5"), ("+7 ", "7")])
def test_plain_decimals_are_read_exactly(number: str, value: str) -> None:
    order = read(order_with(rxg(f15=number, f16="mL/h^mL/h^UCUM"), RXR, PUMP_OBX))
    assert order.rate == q(f"{value} mL/h")


def test_flows_are_rates_in_ml_per_hour_and_other_rates_are_dose_rates() -> None:
    per_min = read(order_with(rxg(f15="0.25", f16="mL/min^mL/min^UCUM"), RXR, PUMP_OBX))
    assert per_min.rate == q("15 mL/h")
    insulin = read(order_with(rxg(f15="2", f16="[iU]/h^^UCUM"), RXR, PUMP_OBX))
    assert (insulin.dose_rate, insulin.rate) == (q("2 [iU]/h"), None)
    bolus = read(order_with(rxg(f15="5", f16="mg^mg^UCUM"), RXR, PUMP_OBX, orc=ORC.replace("RE|", "CH|")))
    assert (bolus.dose, bolus.action) == (q("5 mg"), OrderAction.BOLUS)


# --- fields -----------------------------------------------------------------------------------------


def test_duration_repetitions_are_summed_exactly() -> None:
    """ihe-pcd.md: TQ1-13 `2^264384&MDC_DIM_HR&MDC~45^264352&MDC_DIM_MIN&MDC`."""
    tq1 = "TQ1|1||||||||||||2^264384&MDC_DIM_HR&MDC~45^264352&MDC_DIM_MIN&MDC"
    order = read(order_with(rxg(f15="5", f16="mL/h"), tq1, RXR, PUMP_OBX))
    assert order.duration == q("165 min")
    single = read(order_with(rxg(f15="5", f16="mL/h"), "TQ1|1||||||||||||2^h&h&UCUM", RXR, PUMP_OBX))
    assert single.duration == q("2 h")
    bad = refused(order_with(rxg(), "TQ1|1||||||||||||2^mL&mL&UCUM", RXR, PUMP_OBX))
    assert problem_codes(bad) == [(PivError.UNITS_MISMATCH, "TQ1-13.2")]


def orc_fields(**fields: str) -> str:
    values = [""] * 19
    for key, value in fields.items():
        values[int(key[1:]) - 1] = value
    return "ORC|" + "|".join(values)


def test_order_control_status_and_identity_fields() -> None:
    orc = orc_fields(
        f1="CH", f2="777^IOP", f5="CM", f8="12344&IOP", f9="20260101120000+0100", f19="^Smith^Anna"
    )
    order = read(order_with(rxg(f15="5", f16="mg"), RXR, PUMP_OBX, orc=orc))
    assert order.action is OrderAction.BOLUS
    assert order.order_id == "777"
    assert order.status == "completed"
    assert order.parent_order_id == "12344"
    assert order.ordered_at is not None
    assert order.ordered_at.utcoffset() == timedelta(hours=1)
    assert order.ordered_by == "Anna Smith"  # no XCN-1: the name
    with_id = orc_fields(f1="RE", f2="778", f19="N0001^Smith^Anna")
    assert read(order_with(rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX, orc=with_id)).ordered_by == "N0001"


@pytest.mark.parametrize(
    ("orc", "expected"),
    [
        ("ORC|NW|1", ("103", "ORC-1")),
        ("ORC||1", ("101", "ORC-1")),
        ("ORC|RE|", ("101", "ORC-2")),
        ("ORC|RE|1|||ZZ", ("103", "ORC-5")),
        ("ORC|RE|1|||||||2026-01-01", ("102", "ORC-9")),
        ("ORC|RE|1|||||||20261301", ("102", "ORC-9")),
    ],
)
def test_bad_order_fields_are_refused_with_their_code(orc: str, expected: tuple[str, str]) -> None:
    error = refused(order_with(rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX, orc=orc))
    assert problem_codes(error) == [expected]


def test_an_order_time_without_offset_is_kept_naive_for_check_order_to_refuse() -> None:
    order = read(order_with(rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX, orc="ORC|RE|1|||||||20260101120000"))
    assert order.ordered_at is not None
    assert order.ordered_at.tzinfo is None
    problems = check_order(order, now=AT, policy=OrderPolicy(), pumps={"PUMP-1": frozenset({"2"})})
    assert [p.code for p in problems] == [PivError.STALE]


@pytest.mark.parametrize(
    ("pid", "element"),
    [(None, "PID"), ("PID|||^^^IHE^PI||Doe^John", "PID-3"), ('PID|||""||Doe', "PID-3")],
)
def test_no_patient_identifier_is_refused_with_9012(pid: str | None, element: str) -> None:
    segments = [s for s in (pid, ORC, rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX) if s is not None]
    error = refused(rgv(*segments))
    assert problem_codes(error) == [(PivError.PATIENT_MISMATCH, element)]


def test_encounter_and_names() -> None:
    pv1 = "PV1||I|ICU^1^1||||||||||||||||VN-55^^^HOSP"
    order = read(rgv("PID|||98765~OTHER||Hon^Albert^Q", pv1, ORC, rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX))
    assert order.encounter == "VN-55"
    assert order.patient_id == "98765"  # the first identifier
    assert order.patient_name == "Hon, Albert Q"


def test_a_drug_amount_needs_a_volume_and_a_ratio_does_not() -> None:
    error = refused(order_with(rxg(f15="5", f16="mL/h", f17="400", f18="mg"), RXR, PUMP_OBX))
    assert problem_codes(error) == [("101", "RXG-23")]
    assert "400 mg" in str(error)
    ratio = read(
        order_with(rxg(f15="5", f16="mL/h", f17="1.6", f18="mg/mL", f23="50", f24="mL"), RXR, PUMP_OBX)
    )
    assert ratio.concentration == Concentration(q("1.6 mg"), q("1 mL"))
    assert ratio.container_volume == q("50 mL")
    zero = refused(order_with(rxg(f15="5", f16="mL/h", f17="0", f18="mg", f23="50", f24="mL"), RXR, PUMP_OBX))
    assert problem_codes(zero) == [("102", "RXG-17")]


@pytest.mark.parametrize(
    ("ident", "pump", "channel"),
    [("PUMP-1/2", "PUMP-1", "2"), ("PUMP-1", "PUMP-1", None), ("^^A0001^PUMPVENDOR", "A0001", None),
     ("P7/B^^0012210000000000^EUI-64", "P7", "B"), ("", None, None)],
)  # fmt: skip
def test_pump_identity_forms(ident: str, pump: str | None, channel: str | None) -> None:
    obx = f"OBX|1||69986^MDC_DEV_PUMP_INFUS_VMD^MDC||||||||X|||||||{ident}"
    weight = "OBX|2|NM|68063^MDC_ATTR_PT_WEIGHT^MDC||70|kg^kg^UCUM"
    order = read(order_with(rxg(f15="5", f16="mL/h"), RXR, obx, weight))
    assert (order.pump_id, order.channel) == (pump, channel)


@pytest.mark.parametrize("ident", ["a/b/c", "/2", "PUMP/"])
def test_a_pump_identity_that_is_not_pump_or_pump_channel_is_refused(ident: str) -> None:
    obx = f"OBX|1||69986^MDC_DEV_PUMP_INFUS_VMD^MDC||||||||X|||||||{ident}"
    assert problem_codes(refused(order_with(rxg(f15="5", f16="mL/h"), RXR, obx))) == [("102", "OBX-18")]


def test_patient_measurements() -> None:
    obx = [
        "OBX|2|NM|68063^MDC_ATTR_PT_WEIGHT^MDC||3250|263872^MDC_DIM_X_G^MDC",
        "OBX|3|NM|188744^MDC_AREA_BODY_SURF_ACTUAL^MDC||0.21|m2^m2^UCUM",
        "OBX|4|ST|99999^MDC_SOMETHING_ELSE^MDC||whatever",  # not an order attribute: passed over
    ]
    order = read(order_with(rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX, *obx))
    assert order.weight == q("3250 g{body}")
    assert order.bsa == q("0.21 m2")


def test_two_different_weights_are_refused_with_9011() -> None:
    obx = ["OBX|2|NM|68063^MDC_ATTR_PT_WEIGHT^MDC||70|kg", "OBX|3|NM|68063^MDC_ATTR_PT_WEIGHT^MDC||72|kg"]
    error = refused(order_with(rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX, *obx))
    assert problem_codes(error) == [(PivError.WEIGHT_MISMATCH, "OBX[3]-5")]
    assert "70 kg" in str(error)
    assert "72 kg" in str(error)


def test_a_height_in_cm_is_read_and_an_unknown_length_unit_refused() -> None:
    """MDC_DIM_CENTI_M 263441 (ihe-pcd.md units table) is read as a height in cm; a length unit the
    gateway does not know is refused (9009), never dropped."""
    obx = "OBX|2|NM|68060^MDC_ATTR_PT_HEIGHT^MDC||170|263441^MDC_DIM_CENTI_M^MDC"
    assert read(order_with(rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX, obx)).height == q("170 cm")
    inches = "OBX|2|NM|68060^MDC_ATTR_PT_HEIGHT^MDC||67|[in_i]^[in_i]^UCUM"
    error = refused(order_with(rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX, inches))
    assert problem_codes(error) == [(PivError.UNITS_MISMATCH, "OBX[2]-6")]


def test_pca_parameters_are_refused_not_half_read() -> None:
    obx = "OBX|2|NM|157985^MDC_PCA_SOMETHING^MDC||10|min"
    error = refused(order_with(rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX, obx))
    assert problem_codes(error) == [("207", "OBX[2]-3")]
    assert "PCA" in str(error)


def test_every_problem_is_reported_at_once() -> None:
    data = rgv(
        "PID|||||Doe",
        "ORC|NW|77|||||||20261301",
        rxg(f5="1,5", f7="mL", f15="10", f16="mg^mg^UCUM^265266^MDC_DIM_MILLI_L_PER_HR^MDC"),
        RXR,
        "OBX|1||69986^MDC_DEV_PUMP_INFUS_VMD^MDC||||||||X|||||||a/b/c",
    )
    error = refused(data)
    assert error.order_id == "77"
    assert sorted(problem_codes(error)) == sorted(
        [
            (PivError.PATIENT_MISMATCH, "PID-3"),
            ("103", "ORC-1"),
            ("102", "ORC-9"),
            ("102", "RXG-5"),
            (PivError.UNITS_MISMATCH, "RXG-16"),
            ("102", "OBX-18"),
        ]
    )


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        ((PID, rxg(), RXR), [("100", "ORC"), ("100", "RXG")]),  # no ORC; the RXG before it
        ((PID, ORC, RXR), [("100", "RXR")]),  # no RXG, an RXR before it
        ((PID, ORC, ORC, rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX), [("100", "ORC[2]")]),
        ((PID, ORC, rxg(f15="5", f16="mL/h"), RXR, RXR, PUMP_OBX), [("100", "RXR[2]")]),
        ((PID, ORC, PID, rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX), [("100", "PID[2]")]),
    ],
)
def test_segment_structure_problems(segments: tuple[str, ...], expected: list[tuple[str, str]]) -> None:
    error = refused(rgv(*segments))
    assert sorted(problem_codes(error)) == sorted(
        [*expected, *([("100", "RXG")] if not any(s.startswith("RXG") for s in segments) else [])]
    )


def test_order_detail_and_encoding_segments_are_passed_over() -> None:
    """RGV_O15 allows RXO/RXE groups (with their own TQ1 and RXR) before the give group."""
    order = read(
        order_with(
            "RXE|^^^20260101|1234^Dopamine|400||mg",
            "TQ1|1||||||||||||9^h",
            "RXR|PO",
            rxg(f15="5", f16="mL/h"),
            RXR,
            PUMP_OBX,
        )
    )
    assert (order.route, order.duration, order.rate) == ("IV", None, q("5 mL/h"))


# --- multistep ----------------------------------------------------------------------------------------


def test_multistep_later_groups_are_later_steps() -> None:
    data = order_with(
        rxg(f5="100", f7="mL", f15="5", f16="ug/kg/min", f17="400", f18="mg", f23="250", f24="mL"),
        "TQ1|1||||||||||||20^min",
        RXR,
        PUMP_OBX,
        rxg(f5="150", f7="mL", f15="2.5", f16="ug/kg/min").replace("RXG|1|", "RXG|2|"),
        "TQ1|1||||||||||||1^h",
        RXR,
        PUMP_OBX,
    )
    order = read(data)
    assert order.multistep
    assert order.dose_rate == q("5 ug/kg/min")
    assert order.duration == q("20 min")
    assert order.later_steps == (
        OrderStep(2, dose_rate=q("2.5 ug/kg/min"), vtbi=q("150 mL"), duration=q("1 h")),
    )


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        (
            rxg(f15="5", f16="mL/h").replace("1234^Dopamine", "999^Heparin").replace("RXG|1|", "RXG|2|"),
            ("207", "RXG[2]-4"),
        ),
        (rxg(f15="5", f16="mL/h", f17="1", f18="mg/mL").replace("RXG|1|", "RXG|2|"), ("207", "RXG[2]-17")),
        (rxg(f15="5", f16="mL/h").replace("RXG|1|", "RXG||"), ("101", "RXG[2]-1")),
        (rxg(f15="5", f16="mL/h"), ("100", "RXG[2]-1")),  # step 1 again
        (rxg(f15="5", f16="mg").replace("RXG|1|", "RXG|2|"), ("207", "RXG[2]-16")),  # a dose
        (rxg(f15="5", f16="mL/h").replace("RXG|1|", "RXG|²|"), ("102", "RXG[2]-1")),  # not ASCII digits
    ],
)
def test_multistep_problems(second: str, expected: tuple[str, str]) -> None:
    data = order_with(rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX, second, RXR)
    assert problem_codes(refused(data)) == [expected]


# --- building ---------------------------------------------------------------------------------------


def test_built_order_has_what_pcd03_requires() -> None:
    data = build_rgv_o15(dopamine(), control_id="CTRL-1", at=AT, sender=EMAR, receiver=GATEWAY)
    msg = parse_message(data)
    assert msg.message_type == ("RGV", "O15", "RGV_O15")
    assert msg.version == "2.6"
    assert (msg.accept_ack, msg.app_ack) == ("AL", "AL")
    assert msg.profile_ids()[0].oid == PIV_OID
    orc = msg.segments("ORC")[0]
    assert orc.field(9) == "20261207115905+0100"
    assert msg.segments("RXR")[0].component(4) == "IV"
    obx = msg.segments("OBX")[0]
    assert (obx.component(3), obx.component(18, 1), obx.component(18, 3)) == ("69986", "A0001/1", "")
    assert msg.segments("RXG")[0].components(16) == [
        "265619", "MDC_DIM_MICRO_G_PER_KG_PER_MIN", "MDC", "ug/kg/min", "ug/kg/min", "UCUM"
    ]  # fmt: skip
    validate_strict(data)
    assert read_rgv_o15(msg) == dopamine()


def test_built_multistep_order_validates_and_reads_back() -> None:
    order = dopamine(
        duration=q("30 min"),
        later_steps=(
            OrderStep(2, dose_rate=q("5 ug/kg/min"), vtbi=q("100 mL"), duration=q("1 h")),
            OrderStep(3, rate=q("2 mL/h"), vtbi=q("20 mL")),
        ),
    )
    data = build_rgv_o15(order, control_id="CTRL-1", at=AT, sender=EMAR, receiver=GATEWAY)
    validate_strict(data)
    msg = parse_message(data)
    assert [s.component(1) for s in msg.segments("RXG")] == ["1", "2", "3"]
    assert len(msg.segments("RXR")) == 3
    assert read_rgv_o15(msg) == order


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"ordered_at": None}, "ORC-9 is required"),
        ({"ordered_at": AT.replace(tzinfo=None)}, "no UTC offset"),
        ({"route": None}, "RXR-1 is required"),
        ({"rate": q("5 mL/h")}, "RXG-15 holds one of them"),
        ({"pump_id": None, "channel": None, "weight": None}, "needs an OBX"),
        ({"pump_id": None}, "names channel 1 but no pump"),
        ({"container_volume": q("100 mL")}, "cannot be written"),
        ({"status": "draft"}, "no ORC-5 code"),
        ({"later_steps": (OrderStep(1, rate=q("1 mL/h")),)}, "step 1 after step 1"),
    ],
)
def test_orders_a_message_cannot_express_are_refused(changes: dict[str, object], said: str) -> None:
    with pytest.raises(Hl7Error, match=said):
        build_rgv_o15(dopamine(**changes), control_id="C", at=AT, sender=EMAR, receiver=GATEWAY)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(orders())
def test_round_trip_read_of_built_equals_the_order(order: Order) -> None:
    assert order.received_from is not None
    data = build_rgv_o15(order, control_id=order.received_from, at=AT, sender=EMAR, receiver=GATEWAY)
    assert read_rgv_o15(parse_message(data)) == order


def _gives_every_vtbi(order: Order) -> bool:
    return order.vtbi is not None and all(step.vtbi is not None for step in order.later_steps)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(orders().filter(_gives_every_vtbi))
def test_built_orders_validate_strictly(order: Order) -> None:
    """hl7apy STRICT, about 20 messages a second: a few examples only. Orders with a VTBI in every
    step: see the next test for those without."""
    assert order.received_from is not None
    validate_strict(
        build_rgv_o15(order, control_id=order.received_from, at=AT, sender=EMAR, receiver=GATEWAY)
    )


def test_an_order_without_vtbi_leaves_rxg5_and_rxg7_empty_as_piv_says() -> None:
    """ihe-pcd.md: an XO rate change has RXG-5/7 empty. HL7 2.6 makes both required, so hl7apy
    reports exactly those two; the builder does not invent a volume (nor send the HL7 null, which
    an order consumer may read as "clear the VTBI")."""
    order = dopamine(action=OrderAction.CHANGE, vtbi=None)
    data = build_rgv_o15(order, control_id="C", at=AT, sender=EMAR, receiver=GATEWAY)
    rxg_segment = parse_message(data).segments("RXG")[0]
    assert (rxg_segment.field(5), rxg_segment.field(7)) == ("", "")
    with pytest.raises(Hl7ValidationError) as info:
        validate_strict(data)
    assert info.value.errors == ("Missing required child RXG.RXG_5", "Missing required child RXG.RXG_7")


def test_time_zone_of_orc9_survives_the_round_trip() -> None:
    tz = timezone(timedelta(hours=-5, minutes=-30))
    order = dopamine(ordered_at=AT.astimezone(tz))
    data = build_rgv_o15(order, control_id="CTRL-1", at=AT, sender=EMAR, receiver=GATEWAY)
    back = read_rgv_o15(parse_message(data))
    assert back.ordered_at is not None
    assert back.ordered_at.utcoffset() == tz.utcoffset(None)


# --- nothing but OrderRefused / Hl7Error ------------------------------------------------------------


@st.composite
def mutated_orders(draw: st.DrawFn) -> bytes:
    base = example(draw(st.sampled_from(["03", "06"])))
    if draw(st.booleans()):
        base = build_rgv_o15(draw(orders()), control_id="X1", at=AT, sender=EMAR, receiver=GATEWAY)
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["delete", "delimiter", "text", "byte"]))
        if action == "delete":
            del data[position : position + draw(st.integers(1, 12))]
        elif action == "delimiter":
            data.insert(position, draw(st.sampled_from(b"|^~\\&\r/.-, ")))
        elif action == "text":
            data[position:position] = draw(
                st.sampled_from([b"1,5", b"-3", b"NaN", b"1e9", b"99999999", b'""'])
            )
        else:
            data[position] = draw(st.integers(0, 255))
        if not data:
            break
    return bytes(data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_orders())
def test_mutated_orders_are_read_or_refused_never_crash(data: bytes) -> None:
    try:
        order = read_rgv_o15(parse_message(data))
    except Hl7Error as exc:
        why: object = exc.detail
    except OrderRefused as exc:
        why = exc.problems
    else:
        why = None
    if why is not None:
        assert why  # a refusal always says why
        return
    assert order.patient_id
    assert order.order_id
    for value in (order.vtbi, order.rate, order.dose_rate, order.dose):
        assert value is None or value.value >= 0


def test_decimal_values_are_never_floats() -> None:
    order = read(example("03"))
    assert order.weight is not None
    assert type(order.weight.value) is Decimal
    assert order.dose_rate is not None
    assert type(order.dose_rate.value) is Decimal


@pytest.mark.parametrize(
    ("give", "code", "element"),
    [
        (rxg(f15="1" * 35, f16="mL/h"), "102", "RXG-15"),  # 35 digits: more than any order carries
        (rxg(f15="0", f16="mL/h"), "102", "RXG-15"),  # a zero rate
        (rxg(f5="0", f7="mL", f15="5", f16="mL/h"), "102", "RXG-5"),  # a zero VTBI
    ],
)
def test_numbers_no_order_carries_are_refused_naming_the_field(give: str, code: str, element: str) -> None:
    """Found in review: a 35-digit rate escaped as QuantityError, and zero rates and volumes were
    accepted; a consumer then acknowledged CA and never decided the order."""
    error = refused(order_with(give, RXR, PUMP_OBX))
    assert (code, element) in problem_codes(error)


def test_a_code_of_thousands_of_digits_is_refused_not_a_crash() -> None:
    obx = "OBX|2|NM|" + "9" * 5000 + "^MDC_SOMETHING^MDC||5|kg"
    data = order_with(rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX, obx)
    with contextlib.suppress(OrderRefused):  # refused, or the unknown OBX ignored: no ValueError escapes
        read(data)


def test_a_weight_marked_wrong_or_deleted_is_not_used() -> None:
    """HL7 table 0085: W (wrong, replaced) and D (deleted) results are refused, never read."""
    for status in ("W", "D", "X"):
        obx = f"OBX|2|NM|68063^MDC_ATTR_PT_WEIGHT^MDC||85|kg^kg^UCUM|||||{status}"
        error = refused(order_with(rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX, obx))
        assert (PivError.WEIGHT_MISMATCH, "OBX[2]-11") in problem_codes(error)
    final = "OBX|2|NM|68063^MDC_ATTR_PT_WEIGHT^MDC||85|kg^kg^UCUM|||||F"
    assert read(order_with(rxg(f15="5", f16="mL/h"), RXR, PUMP_OBX, final)).weight == q("85 kg")


def test_pump_type_and_line_are_kept_and_a_pca_order_refused() -> None:
    """RXR-3 (table 0164) and RXR-4 (table 0165): a piggyback is not read as a primary infusion
    (found in review: both were dropped); a PCA pump order is refused, as its parameters are."""
    piggyback = read(order_with(rxg(f15="5", f16="mL/h"), "RXR|IV||^SYR^HL70164|^IVPB^HL70165", PUMP_OBX))
    assert (piggyback.pump_type, piggyback.line) == ("SYR", "IVPB")
    error = refused(order_with(rxg(f15="5", f16="mL/h"), "RXR|IV||^PCA^HL70164", PUMP_OBX))
    assert ("207", "RXR-3") in problem_codes(error)
