"""Acknowledgements (hl7/ack.py) and the strict validator (hl7/validate.py).

Golden inputs: ``shared/reference/hl7-examples/05`` (ACK^O15 ``MSA|CA|1``, TF-2 Rev 9 E.2.3) and
``08`` (RRG^O16 ``MSA|AR|102`` with ``ERR|||207^ Application internal error|F|9010^Unable to match
medication to drug library``, and a space inside MSH-7). Every acknowledgement built here is checked
with hl7apy STRICT (validate_strict).
"""

from __future__ import annotations

import pytest
from hl7_samples import AT, EMAR, GATEWAY, dopamine, example
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pumpgw.gateway.errors import Hl7Error
from pumpgw.gateway.orders import OrderProblem, PivError
from pumpgw.hl7 import codes
from pumpgw.hl7.ack import AckError, build_ack, build_rrg_o16, nak_for_unreadable, read_ack
from pumpgw.hl7.build import Party
from pumpgw.hl7.message import Hl7Message, parse_message
from pumpgw.hl7.piv import build_rgv_o15
from pumpgw.hl7.validate import Hl7ValidationError, validate_strict, validation_report

PROBLEMS = (
    OrderProblem(PivError.STALE, "ordered_at", "the order was made 40 min ago"),
    OrderProblem(PivError.UNITS_MISMATCH, "RXG[2]-16", "mg|h is not a unit"),
    OrderProblem("101", "TQ1-13.2", "empty"),
    OrderProblem(PivError.NOT_IN_LIBRARY, "drug", "not in the library"),
)


def rgv() -> Hl7Message:
    return parse_message(build_rgv_o15(dopamine(), control_id="RGV-7", at=AT, sender=EMAR, receiver=GATEWAY))


# --- reading -------------------------------------------------------------------------------------


def test_accept_ack_example_reads_as_ca() -> None:
    """hl7-examples/05: `MSA|CA|1`."""
    ack = read_ack(example("05"))
    assert (ack.code, ack.acked_control_id, ack.errors, ack.text) == ("CA", "1", (), "")
    assert ack.accepted
    assert ack.message_type == ("ACK", "O15", "ACK")


def test_application_reject_example_reads_with_its_piv_error() -> None:
    """hl7-examples/08: AR for message 102, ERR-5 9010, a space in MSH-7 and in ERR-3."""
    ack = read_ack(example("08"))
    assert (ack.code, ack.acked_control_id) == ("AR", "102")
    assert ack.errors == (AckError("9010", "Unable to match medication to drug library"),)
    assert not ack.accepted
    assert str(ack.errors[0]) == "Unable to match medication to drug library (code 9010)"
    assert ack.control_id == "102"


def test_tolerates_empty_msa2_leading_spaces_and_the_v24_err_form() -> None:
    data = (
        "MSH|^~\\&|IOC|F|IOP|F|20080101123456- 0600||ACK^O15^ACK|9|P|2.5\r"
        "MSA| ae ||some text\r"
        "ERR|RXG^1^16^9009&Units mismatch&HL70533\r"
        "ERR|||207^ Application internal error|E\r"
    )
    ack = read_ack(data)
    assert (ack.code, ack.acked_control_id, ack.text) == ("AE", "", "some text")
    assert ack.errors == (AckError("9009", "Units mismatch"), AckError("207", "Application internal error"))


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (example("03"), "no MSA segment"),
        ("MSH|^~\\&|A|B|||2008||ACK^O15^ACK|1|P|2.6\rMSA|OK|1", "MSA-1 'OK'"),
        (b"\x00garbage", "control character"),
    ],
)
def test_what_is_not_an_acknowledgement_is_refused(data: bytes | str, said: str) -> None:
    with pytest.raises(Hl7Error, match=said):
        read_ack(data)


# --- building ACK ----------------------------------------------------------------------------------


def test_accept_ack_for_the_dopamine_example_validates() -> None:
    """The ACK^O15 for hl7-examples/03: like example 05, in the version the order came in (2.5)."""
    order = parse_message(example("03"))
    data = build_ack(order, "CA", at=AT, sender=GATEWAY, control_id="ACK-1")
    validate_strict(data)
    msg = parse_message(data)
    assert msg.message_type == ("ACK", "O15", "ACK")
    assert msg.version == "2.5"
    assert msg.control_id == "ACK-1"
    assert (msg.receiver.application, msg.receiver.universal_id) == ("IOPVENDOR", "1234560000000001")
    assert (msg.accept_ack, msg.app_ack) == ("", "")
    ack = read_ack(msg)
    assert (ack.code, ack.acked_control_id) == ("CA", "1")


def test_err_segments_carry_location_codes_and_the_reason() -> None:
    data = build_ack(rgv(), "CR", at=AT, sender=GATEWAY, errors=PROBLEMS, text="refused")
    validate_strict(data)
    errs = parse_message(data).segments("ERR")
    assert [e.field(2) for e in errs] == ["ORC^1^9", "RXG^2^16", "TQ1^1^13^1^2", ""]
    assert [e.field(3) for e in errs] == [
        "207^Application internal error^HL70357",
        "207^Application internal error^HL70357",
        "101^Required field missing^HL70357",
        "207^Application internal error^HL70357",
    ]
    assert [e.component(4) for e in errs] == ["E"] * 4
    assert [e.field(5) for e in errs] == [
        "9022^Stale program",
        "9009^Units do not match the drug library",
        "",
        "9010^Unable to match medication to drug library",
    ]
    assert errs[1].field(8) == "RXG[2]-16: mg\\F\\h is not a unit"  # escaped on the wire
    ack = read_ack(data)
    assert ack.text == "refused"
    assert ack.errors == (
        AckError("9022", "ordered_at: the order was made 40 min ago"),
        AckError("9009", "RXG[2]-16: mg|h is not a unit"),
        AckError("101", "TQ1-13.2: empty"),
        AckError("9010", "drug: not in the library"),
    )


def test_trigger_can_be_given_and_bad_codes_are_refused() -> None:
    msg = rgv()
    assert parse_message(build_ack(msg, "AA", at=AT, sender=GATEWAY, trigger="O16")).message_type[1] == "O16"
    with pytest.raises(Hl7Error, match="'XX' is not an acknowledgement code"):
        build_ack(msg, "XX", at=AT, sender=GATEWAY)


def test_ack_answers_in_26_when_the_version_is_unknown() -> None:
    odd = parse_message("MSH|^~\\&|A|B|||2008||ADT^A01^ADT_A01|1|P|9.9\r")
    data = build_ack(odd, "AR", at=AT, sender=GATEWAY, errors=[OrderProblem("200", "MSH-9", "not here")])
    assert parse_message(data).version == "2.6"
    validate_strict(data)


# --- building RRG^O16 -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["AA", "AE", "AR"])
def test_rrg_o16_validates_and_reads_back(code: str) -> None:
    msg = rgv()
    errors = () if code == "AA" else PROBLEMS
    data = build_rrg_o16(
        msg, dopamine(), code, control_id="RRG-1", at=AT, sender=GATEWAY, receiver=msg.sender, errors=errors
    )
    validate_strict(data)
    rrg = parse_message(data)
    assert rrg.message_type == ("RRG", "O16", "RRG_O16")
    assert (rrg.version, rrg.accept_ack, rrg.app_ack) == ("2.6", "AL", "NE")
    assert rrg.profile_ids()[0].oid == codes.PCD_03_RRG.oid
    orc = rrg.segments("ORC")[0]
    assert (orc.component(1), orc.component(2)) == ("OK" if code == "AA" else "UA", "12345")
    ack = read_ack(rrg)
    assert (ack.code, ack.acked_control_id, len(ack.errors)) == (code, "RGV-7", len(errors))


def test_rrg_o16_without_an_order_validates() -> None:
    """An order that could not be read: MSH, MSA, ERR only, like hl7-examples/08."""
    msg = rgv()
    data = build_rrg_o16(
        msg, None, "AR", control_id="RRG-2", at=AT, sender=GATEWAY, receiver=msg.sender, errors=PROBLEMS[:1]
    )
    validate_strict(data)
    assert [s.name for s in parse_message(data).segments_in_order] == ["MSH", "MSA", "ERR"]


@pytest.mark.parametrize(
    ("code", "errors", "said"),
    [("CA", (), "AA, AE or AR"), ("AA", PROBLEMS, "cannot carry errors"), ("AR", (), "must say why")],
)
def test_rrg_o16_refuses_inconsistent_requests(
    code: str, errors: tuple[OrderProblem, ...], said: str
) -> None:
    msg = rgv()
    with pytest.raises(Hl7Error, match=said):
        build_rrg_o16(
            msg, None, code, control_id="R", at=AT, sender=GATEWAY, receiver=msg.sender, errors=errors
        )


# --- unreadable frames --------------------------------------------------------------------------------


def test_nak_for_junk_without_msh() -> None:
    data = nak_for_unreadable(
        b"\x00\x01hello", "the message holds control character 0x00", at=AT, sender=GATEWAY
    )
    ack = read_ack(data)
    assert (ack.code, ack.acked_control_id) == ("AR", "")
    assert ack.errors == (AckError("100", "the message holds control character 0x00"),)
    # Without an MSH there is no control id to name and no trigger: hl7apy says exactly that.
    errors, _ = validation_report(data)
    assert errors == ["Missing required child MSH_9.MSG_2", "Missing required child MSA.MSA_2"]


def test_nak_takes_control_id_trigger_sender_and_mode_from_a_broken_message() -> None:
    broken = b"MSH|^~\\&|IOP^1234560000000001^EUI-64|WARD|||20260101||RGV^O15^RGV_O15|CTRL-9|P|2.6|||AL|AL\rPID|\x00"
    data = nak_for_unreadable(broken, "junk in PID", at=AT, sender=GATEWAY)
    validate_strict(data)
    msg = parse_message(data)
    assert msg.message_type == ("ACK", "O15", "ACK")
    assert (msg.receiver.application, msg.receiver.facility) == ("IOP", "WARD")
    ack = read_ack(msg)
    assert (ack.code, ack.acked_control_id) == ("CR", "CTRL-9")  # MSH-15 set: enhanced mode
    assert ack.errors == (AckError("102", "junk in PID"),)
    original_mode = broken.replace(b"|||AL|AL", b"")
    assert read_ack(nak_for_unreadable(original_mode, "junk", at=AT, sender=GATEWAY)).code == "AR"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from([b"", b"MSH|^~\\&|", b"MSH|", b"xxMSH^"]))
def test_nak_never_raises_and_is_always_readable(data: bytes, prefix: bytes) -> None:
    nak = nak_for_unreadable(prefix + data, "unreadable", at=AT, sender=Party("PUMPGW"))
    ack = read_ack(nak)
    assert ack.code in ("AR", "CR")
    assert ack.errors[0].text == "unreadable"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["05", "08"]), st.lists(st.tuples(st.integers(0, 300), st.binary(max_size=3)), max_size=5)
)
def test_mutated_acks_give_a_result_or_hl7error(number: str, edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(example(number))
    for position, insert in edits:
        data[position : position + 1] = insert
    try:
        ack = read_ack(bytes(data))
    except Hl7Error as exc:
        refusal: Hl7Error | None = exc
    else:
        refusal = None
        assert ack.code in ("AA", "AE", "AR", "CA", "CE", "CR")
    assert refusal is None or refusal.detail


# --- the strict validator ---------------------------------------------------------------------------


def test_strict_validator_lists_the_dopamine_examples_defects() -> None:
    """hl7-examples/03: v2.5 RGV_O15 requires a TQ1 in the give group, and OBX-11 is missing."""
    with pytest.raises(Hl7ValidationError) as info:
        validate_strict(example("03"))
    assert info.value.errors == (
        "Missing required child RGV_O15_GIVE.RGV_O15_TIMING_GIVE",
        "Missing required child OBX.OBX_11",
    )
    assert any("ISO659" in w for w in info.value.warnings)  # MSH-19, a warning only
    assert info.value.control_id == "1"
    assert isinstance(info.value, Hl7Error)


def test_strict_validator_maps_hl7apy_parse_failures() -> None:
    """hl7-examples/08's `20080101123456- 0600` makes hl7apy raise ValueError while parsing."""
    with pytest.raises(Hl7ValidationError, match="hl7apy cannot parse it: ValueError"):
        validate_strict(example("08"))
    with pytest.raises(Hl7ValidationError, match="cannot parse"):
        validate_strict(b"\x00\xff junk")
    with pytest.raises(Hl7ValidationError, match="empty"):
        validate_strict("")


def test_strict_validator_accepts_the_accept_ack_example_in_any_line_ending() -> None:
    """hl7-examples/05 is valid; with \\n or \\r\\n separators (text mode) it still is."""
    validate_strict(example("05"))
    text = example("05").decode()
    validate_strict(text.replace("\r", "\n"))
    validate_strict(text.replace("\r", "\r\n"))
