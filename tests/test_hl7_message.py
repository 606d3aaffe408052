"""The tolerant HL7 v2 reader (hl7/message.py): every IHE example reads, nonsense is refused with
a message saying what is wrong, and nothing but Hl7Error ever comes out of it.

Golden inputs: ``shared/reference/hl7-examples/`` (01, 03, 05, 06, 08, 09, 12; their defects are
listed in its SOURCES.md), always read as bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hl7_samples import all_examples, example
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pumpgw.gateway.errors import Hl7Error
from pumpgw.hl7.message import Delimiters, parse_hl7_time, parse_message, unescape

EXPECTED_TYPES = {
    "01": ("ORU", "R01", "ORU_R01"),
    "03": ("RGV", "O15", "RGV_O15"),
    "05": ("ACK", "O15", "ACK"),
    "06": ("RGV", "O15", "RGV_O15"),
    "08": ("RRG", "O16", "RRG_O16"),
    "09": ("ORU", "R40", "ORU_R40"),
    "12": ("ORU", "R42", "ORU_R01"),
}


@pytest.mark.parametrize("path", all_examples(), ids=lambda p: p.name[:2])
def test_every_example_parses_with_its_type_and_every_segment(path: object) -> None:
    """All of hl7-examples/*.hl7, read as bytes: type, control id, and one Segment per \\r line."""
    from pathlib import Path

    assert isinstance(path, Path)
    data = path.read_bytes()
    msg = parse_message(data)
    assert msg.message_type == EXPECTED_TYPES[path.name[:2]]
    lines = [line for line in data.split(b"\r") if line]
    assert [s.name for s in msg.segments_in_order] == [line[:3].decode() for line in lines]
    assert msg.control_id == lines[0].split(b"|")[9].decode()


def test_the_examples_are_all_covered() -> None:
    assert {p.name[:2] for p in all_examples()} == set(EXPECTED_TYPES)


def test_msh_fields_are_numbered_like_every_other_segment() -> None:
    """hl7-examples/03: MSH-1 is the separator, MSH-2 the encoding characters, MSH-9 the type."""
    msh = parse_message(example("03")).msh
    assert msh.field(1) == "|"
    assert msh.field(2) == "^~\\&"
    assert msh.component(2) == "^~\\&"  # never split or unescaped
    assert msh.field(7) == "20080101123456-0600"
    assert msh.field(9) == "RGV^O15^RGV_O15"
    assert msh.component(9, 2) == "O15"
    assert msh.field(10) == "1"
    assert msh.field(12) == "2.5"


def test_header_values_of_the_dopamine_example() -> None:
    """hl7-examples/03: sender and receiver with their EUI-64, MSH-15/16, MSH-21 without an OID."""
    msg = parse_message(example("03"))
    assert (msg.sender.application, msg.sender.facility) == ("IOPVENDOR", "IOPVENDOR")
    assert (msg.sender.universal_id, msg.sender.universal_id_type) == ("1234560000000001", "EUI-64")
    assert (msg.receiver.application, msg.receiver.facility) == ("IOCVENDOR", "IOCVENDOR")
    assert (msg.accept_ack, msg.app_ack) == ("AL", "ER")
    assert msg.version == "2.5"
    assert msg.profile_ids() == (("IHE_PCD_PIV_001", ""),)


def test_profile_oid_is_trimmed() -> None:
    """hl7-examples/12 has a leading space in MSH-21 EI-3 (`^ 1.3.6.1...`)."""
    msg = parse_message(example("12"))
    assert msg.profile_ids()[0].oid == "1.3.6.1.4.1.19376.1.6.4.10"
    assert msg.profile_ids()[0].entity == "IHE_PCD_010"


def test_components_are_stripped_of_the_examples_stray_spaces() -> None:
    """hl7-examples/03 RXG-7 ends in `UCUM ` (a trailing space)."""
    rxg = parse_message(example("03")).segments("RXG")[0]
    assert rxg.field(7).endswith("UCUM ")  # the raw field keeps it
    assert rxg.component(7, 6) == "UCUM"
    assert rxg.components(16) == [
        "3475",
        "ug/kg/min",
        "UCUM",
        "265619",
        "MDC_DIM_MICRO_G_PER_KG_PER_MIN",
        "MDC",
    ]


def test_hl7_null_is_told_apart_from_absent() -> None:
    """hl7-examples/01 PID-5 `Hon^Albert^""^^^^L`: component 3 is the HL7 null."""
    pid = parse_message(example("01")).segments("PID")[0]
    assert pid.component(5, 2) == "Albert"
    assert pid.component(5, 3) == ""
    assert pid.is_null(5, 3)
    assert not pid.is_null(5, 4)  # absent, not null
    assert not pid.is_null(5)
    assert pid.component(5, 7) == "L"


def test_absent_parts_read_as_empty() -> None:
    msg = parse_message(example("06"))
    pid = msg.segments("PID")[0]
    assert pid.field(99) == ""
    assert pid.component(99, 3, rep=4) == ""
    assert pid.subcomponent(3, 9, 2) == ""
    assert pid.repetitions(2) == []
    assert msg.segments("ZZZ") == []
    assert msg.segment("PV1") is None


def test_repetitions_components_and_subcomponents() -> None:
    text = (
        "MSH|^~\\&|A|B|||20080101||RGV^O15^RGV_O15|7|P|2.6\r"
        "TQ1|1||||||||||||2^264384&MDC_DIM_HR&MDC~45^264352&MDC_DIM_MIN&MDC\r"
    )
    tq1 = parse_message(text).segments("TQ1")[0]
    assert tq1.repetitions(13) == ["2^264384&MDC_DIM_HR&MDC", "45^264352&MDC_DIM_MIN&MDC"]
    assert tq1.component(13, 1, rep=1) == "45"
    assert tq1.subcomponent(13, 2, 2, rep=1) == "MDC_DIM_MIN"
    assert tq1.subcomponents(13, 2) == ["264384", "MDC_DIM_HR", "MDC"]
    assert tq1.component(13, 2) == "264384&MDC_DIM_HR&MDC"
    assert tq1.index == 1


def test_escape_sequences_are_unescaped_in_values_only() -> None:
    text = "MSH|^~\\&|A|B|||20080101||ADT^A01^ADT_A01|9|P|2.6\rNTE|1||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41C3A9\\g\\H\\h\\N\\\r"
    nte = parse_message(text).segments("NTE")[0]
    assert nte.component(3) == "a|b^c&d~e\\fAég" + "h"
    assert nte.field(3) == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41C3A9\\g\\H\\h\\N\\"


@pytest.mark.parametrize(
    ("escaped", "meaning"),
    [("\\Q\\", "\\Q\\"), ("open\\F", "open\\F"), ("\\XZZ\\", "\\XZZ\\"), ("\\.br\\", "\n")],
)
def test_unknown_or_open_escapes_are_kept_as_they_are(escaped: str, meaning: str) -> None:
    assert unescape(escaped, Delimiters()) == meaning


def test_custom_delimiters_are_honoured() -> None:
    text = "MSH#:~\\&#A#B###20080101##ADT:A01#5#P#2.6\rPID###x:y##a&b"
    msg = parse_message(text)
    assert msg.message_type == ("ADT", "A01", "")
    pid = msg.segments("PID")[0]
    assert pid.component(3, 2) == "y"
    assert pid.subcomponent(5, 1, 2) == "b"


@pytest.mark.parametrize("separator", [b"\n", b"\r\n", b"\r\r"])
def test_segment_separators_other_than_cr_read_the_same(separator: bytes) -> None:
    """hl7-examples/03 with its \\r replaced: the segments are the same."""
    data = example("03")
    again = parse_message(data.replace(b"\r", separator))
    assert [str(s) for s in again.segments_in_order] == [
        str(s) for s in parse_message(data).segments_in_order
    ]


def test_latin1_when_msh18_says_8859_1() -> None:
    """hl7-examples/01 declares MSH-18 8859/1; a name with é in latin-1 bytes reads as é."""
    data = example("01").replace(b"Hon^Albert", "Hön^Albért".encode("latin-1"))
    msg = parse_message(data)
    assert msg.charset == "latin-1"
    assert msg.segments("PID")[0].component(5, 2) == "Albért"


def test_latin1_fallback_when_bytes_are_not_utf8_and_utf8_otherwise() -> None:
    base = "MSH|^~\\&|A|B|||20080101||ADT^A01^ADT_A01|9|P|2.6\rPID|||1||{}\r"
    assert parse_message(base.format("Müller").encode("latin-1")).segments("PID")[0].component(5) == "Müller"
    utf8 = parse_message(base.format("Müller").encode("utf-8"))
    assert utf8.charset == "utf-8"
    assert utf8.segments("PID")[0].component(5) == "Müller"


def test_a_utf8_byte_order_mark_is_passed_over() -> None:
    assert parse_message(b"\xef\xbb\xbf" + example("05")).control_id == "1"


def test_hex_escape_uses_the_message_charset() -> None:
    text = "MSH|^~\\&|A|B|||20080101||ADT^A01^ADT_A01|9|P|2.6\rNTE|1||\\XC3A9\\"
    assert parse_message(text.encode()).segments("NTE")[0].component(3) == "é"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty"),
        (b" \r\n\r ", "empty"),
        (b"PID|||1\rMSH|^~\\&|A", "not with an MSH"),
        (b"\x00\x01\x02\xff\xfe", "control character 0x00"),
        (b"\x0bMSH|^~\\&|A|B|||2008||ACK^A01|1|P|2.6\x1c\r", "control character 0x0B"),
        (b"MSH|^~\\&|A|B|||2008||ACK^A01|1|P|2.6\rpid|1", "segment 2 begins 'pid|1'"),
        (b"MSH|^~\\&|A|B|||2008||ACK^A01|1|P|2.6\rhello world", "segment 2 begins 'hello world'"),
        (b"MSH|^^\\&|A|B|||2008||ACK^A01|1|P|2.6", "not valid delimiters"),
        (b"MSH|^~|A|B|||2008||ACK^A01|1|P|2.6", "not valid delimiters"),
        (b"MSH|^~", "too short"),
        (b"MSH|^~\\&|A|B|||2008|||1|P|2.6", "MSH-9 (message type) is empty"),
        (b"MSH|^~\\&|A|B|||2008||ACK^A01||P|2.6", "MSH-10 (message control id) is empty"),
    ],
)
def test_what_is_not_a_message_is_refused_saying_why(data: bytes, expected: str) -> None:
    with pytest.raises(Hl7Error, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_message(data)


def test_refusal_names_the_control_id_when_it_is_readable() -> None:
    with pytest.raises(Hl7Error) as info:
        parse_message(b"MSH|^~\\&|A|B|||2008||ACK^A01|CTRL9|P|2.6\rBAD SEGMENT")
    assert info.value.control_id == "CTRL9"


def test_not_bytes_or_text_is_refused() -> None:
    with pytest.raises(Hl7Error, match="expected bytes or text"):
        parse_message(12)  # type: ignore[arg-type]


# --- times -------------------------------------------------------------------------------------


def test_time_with_a_space_in_the_offset() -> None:
    """hl7-examples/08 MSH-7 `20080101123456- 0600`."""
    assert parse_hl7_time("20080101123456- 0600") == datetime(
        2008, 1, 1, 12, 34, 56, tzinfo=timezone(-timedelta(hours=6))
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2008", datetime(2008, 1, 1)),  # noqa: DTZ001 - no offset given: naive, on purpose
        ("200802", datetime(2008, 2, 1)),  # noqa: DTZ001
        ("20080229", datetime(2008, 2, 29)),  # noqa: DTZ001
        ("2008022913", datetime(2008, 2, 29, 13)),  # noqa: DTZ001
        ("200802291304", datetime(2008, 2, 29, 13, 4)),  # noqa: DTZ001
        ("20080229130405.1234", datetime(2008, 2, 29, 13, 4, 5, 123400)),  # noqa: DTZ001
        ("20080101+0530", datetime(2008, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30)))),
        (" 20150122182658+0000 ", datetime(2015, 1, 22, 18, 26, 58, tzinfo=UTC)),
    ],
)
def test_time_precision_and_offset(text: str, expected: datetime) -> None:
    parsed = parse_hl7_time(text)
    assert parsed == expected
    assert (parsed.tzinfo is None) == (expected.tzinfo is None)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("20081301", "20081301"),
        ("20080230", "20080230"),
        ("2008010125", "2008010125"),
        ("200801011261", "200801011261"),
        ("20080101-2500", "-2500"),
        ("20080101+0060", "+0060"),
        ("200801011234.5", "needs the seconds"),
        ("2008-01-01", "2008-01-01"),
        ("20080", "20080"),
        ("", "''"),
        ("now", "now"),
        ("٢٠٠٨", "٢٠٠٨"),  # Arabic-Indic digits: int() reads them, HL7 does not
    ],
)
def test_time_nonsense_is_refused_naming_the_value(text: str, named: str) -> None:
    with pytest.raises(Hl7Error, match=named.replace("+", r"\+").replace(".", r"\.")):
        parse_hl7_time(text)


# --- nothing but Hl7Error ----------------------------------------------------------------------


def _read_everything(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except Hl7Error:
        return
    for seg in msg.segments_in_order:
        for n in range(1, len(seg) + 2):
            seg.field(n)
            seg.components(n)
            seg.is_null(n, 1)
            seg.subcomponents(n, 1)
    _ = (msg.sender, msg.receiver, msg.profile_ids(), msg.accept_ack, msg.app_ack)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_a_message_or_hl7error(data: bytes) -> None:
    _read_everything(data)
    _read_everything(b"MSH|^~\\&|A|B|||2008||ACK^A01|1|P|2.6\r" + data)


@st.composite
def mutated_examples(draw: st.DrawFn) -> bytes:
    data = bytearray(example(draw(st.sampled_from(sorted(EXPECTED_TYPES)))))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["replace", "insert", "delete", "delimiter"]))
        if action == "delete" and data:
            del data[position : position + draw(st.integers(1, 20))]
        elif action == "delimiter":
            data.insert(position, draw(st.sampled_from(b'|^~\\&\r\n" ')))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif data:
            data[position] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_examples())
def test_mutated_examples_give_a_message_or_hl7error(data: bytes) -> None:
    _read_everything(data)


def test_a_byte_the_declared_character_set_lacks_is_an_hl7_error() -> None:
    """Found in review: MSH-18 8859/7 with byte 0xFF (undefined in ISO 8859-7) raised
    UnicodeDecodeError, which left a PIV sender without an ACK and ended the EPR's outbox part."""
    data = b"MSH|^~\\&|A|B|C|D|20260101000000+0000||ACK^O15^ACK|1|P|2.6||||||8859/7\rMSA|AA|1|\xff\r"
    with pytest.raises(Hl7Error, match=r"MSH-18 declares '8859/7', but byte 0xFF"):
        parse_message(data)
