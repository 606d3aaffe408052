"""The New Era codec against the protocol document's golden bytes, then properties.

Golden vectors: shared/reference/pump-protocols.md §2.6. Only ``SAF0`` is [verified] there (it is the
manual's own example, NE-M p.39); the others are [computed] by the reference's author with the
algorithm the manual describes. They are still worth pinning: they were computed independently of
this code, so the driver and the emulator cannot drift together.
"""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pumpgw.drivers.newera_codec import (
    MAX_SAFE_DATA,
    NEED_DATA,
    RATE_UNITS,
    VOLUME_UNITS,
    Alarm,
    Command,
    CommandError,
    DeviceDecoder,
    HostDecoder,
    Mode,
    Prompt,
    Reply,
    crc16_xmodem,
    encode_basic_command,
    encode_basic_reply,
    encode_command,
    encode_reply,
    encode_safe,
    format_number,
    format_reading,
    parse_amount,
    parse_dispensed,
    parse_firmware,
    parse_number,
    parse_reply,
)
from pumpgw.gateway.errors import ProtocolError, QuantityError
from pumpgw.gateway.quantity import Quantity

# -- golden vectors, shared/reference/pump-protocols.md §2.6 --------------------------------------

# (data, packet bytes, status in the reference)
HOST_VECTORS = [
    (b"SAF0", "02 08 53 41 46 30 55 43 03", "verified"),  # the manual's example, NE-M p.39
    (b"0", "02 05 30 36 53 03", "computed"),  # status query, address 0
    (b"0RUN", "02 08 30 52 55 4E 44 07 03", "computed"),
    (b"0STP", "02 08 30 53 54 50 B3 F9 03", "computed"),
    (b"0RAT5MH", "02 0B 30 52 41 54 35 4D 48 3A A3 03", "computed"),
    (b"0SAF10", "02 0A 30 53 41 46 31 30 63 BE 03", "computed"),
]
PUMP_VECTORS = [
    (b"00S", "02 07 30 30 53 AA A6 03", Reply(0, Prompt.STOPPED, None, None, "")),  # [computed]
    (b"00A?T", "02 09 30 30 41 3F 54 05 40 03", Reply(0, None, Alarm.COMMS_TIMEOUT, None, "")),  # [computed]
    (
        b"00S?OOR",
        "02 0B 30 30 53 3F 4F 4F 52 23 3F 03",
        Reply(0, Prompt.STOPPED, None, CommandError.OUT_OF_RANGE, ""),
    ),  # [computed]
]


def test_crc_check_value() -> None:
    # The CRC-16/XMODEM check value (reference §2.3).
    assert crc16_xmodem(b"123456789") == 0x31C3


@pytest.mark.parametrize(("data", "packet", "status"), HOST_VECTORS)
def test_host_vectors_encode(data: bytes, packet: str, status: str) -> None:
    assert encode_safe(data) == bytes.fromhex(packet), status


@pytest.mark.parametrize(("data", "packet", "status"), HOST_VECTORS)
def test_host_vectors_decode_on_the_device_side(data: bytes, packet: str, status: str) -> None:
    decoder = DeviceDecoder()
    decoder.receive_data(bytes.fromhex(packet))
    assert decoder.next_event() == Command(data, Mode.SAFE), status
    assert decoder.next_event() is NEED_DATA


@pytest.mark.parametrize(
    ("command", "argument", "packet"),
    [
        ("", "", HOST_VECTORS[1][1]),
        ("RUN", "", HOST_VECTORS[2][1]),
        ("STP", "", HOST_VECTORS[3][1]),
        ("RAT", "5MH", HOST_VECTORS[4][1]),
        ("SAF", "10", HOST_VECTORS[5][1]),
    ],
)
def test_encode_command_builds_the_vectors(command: str, argument: str, packet: str) -> None:
    assert encode_command(0, command, argument, mode=Mode.SAFE) == bytes.fromhex(packet)


@pytest.mark.parametrize(("data", "packet", "reply"), PUMP_VECTORS)
def test_pump_vectors_decode_on_the_host_side(data: bytes, packet: str, reply: Reply) -> None:
    decoder = HostDecoder(mode=Mode.SAFE)
    decoder.receive_data(bytes.fromhex(packet))
    assert decoder.next_event() == reply
    assert decoder.next_event() is NEED_DATA


@pytest.mark.parametrize(("data", "packet", "reply"), PUMP_VECTORS)
def test_pump_vectors_encode(data: bytes, packet: str, reply: Reply) -> None:
    status = reply.alarm if reply.alarm is not None else reply.prompt
    assert status is not None
    assert encode_reply(0, status, error=reply.error, mode=Mode.SAFE) == bytes.fromhex(packet)
    assert encode_safe(data) == bytes.fromhex(packet)


# -- basic mode -----------------------------------------------------------------------------------


def test_basic_framing() -> None:
    assert encode_basic_command(b"0RUN") == b"0RUN\r"
    assert encode_command(0, "RAT", "5MH", mode=Mode.BASIC) == b"0RAT5MH\r"
    assert encode_basic_reply(b"00I") == b"\x0200I\x03"
    assert encode_reply(0, Prompt.INFUSING, data="5.000MH", mode=Mode.BASIC) == b"\x0200I5.000MH\x03"
    decoder = HostDecoder(mode=Mode.BASIC)
    decoder.receive_data(b"noise\x0200I5.000MH\x03")
    assert decoder.next_event() == Reply(0, Prompt.INFUSING, None, None, "5.000MH")


def test_device_decoder_reads_basic_lines_and_safe_packets() -> None:
    decoder = DeviceDecoder()
    decoder.receive_data(b" 0 rat 5 mh\r" + bytes.fromhex(HOST_VECTORS[0][1]) + b"\r")
    assert decoder.next_event() == Command(b" 0 rat 5 mh", Mode.BASIC)
    assert decoder.next_event() == Command(b"SAF0", Mode.SAFE)
    assert decoder.next_event() == Command(b"", Mode.BASIC)  # a bare CR: a status query
    assert decoder.next_event() is NEED_DATA


def test_unknown_mode_reads_either_framing() -> None:
    decoder = HostDecoder(mode=None)
    decoder.receive_data(b"\x0200A?R\x03" + bytes.fromhex(PUMP_VECTORS[0][1]))
    assert decoder.next_event() == Reply(0, None, Alarm.RESET, None, "")
    assert decoder.next_event() == Reply(0, Prompt.STOPPED, None, None, "")


# -- bad frames -----------------------------------------------------------------------------------

GOOD = bytes.fromhex(PUMP_VECTORS[0][1])  # 00S


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (GOOD[:-3] + bytes((GOOD[-3] ^ 1,)) + GOOD[-2:], "CRC"),
        (GOOD[:1] + bytes((GOOD[1] - 1,)) + GOOD[2:], "ETX"),
        (GOOD[:1] + bytes((GOOD[1] + 1,)) + GOOD[2:], "length byte"),
        (b"\x02\x03" + GOOD[2:], "below the minimum"),
    ],
)
def test_a_bad_frame_raises_once_and_the_next_frame_decodes(bad: bytes, reason: str) -> None:
    decoder = HostDecoder()
    decoder.receive_data(bad + GOOD)
    with pytest.raises(ProtocolError, match=reason) as caught:
        decoder.next_event()
    assert caught.value.data.startswith(b"\x02")
    assert decoder.next_event() == PUMP_VECTORS[0][2]
    assert decoder.next_event() is NEED_DATA


def test_split_frames_decode_byte_by_byte() -> None:
    decoder = HostDecoder()
    stream = b"\xff\x00" + GOOD + bytes.fromhex(PUMP_VECTORS[2][1])
    events = []
    for i in range(len(stream)):
        decoder.receive_data(stream[i : i + 1])
        while (event := decoder.next_event()) is not NEED_DATA:
            events.append(event)
    assert events == [PUMP_VECTORS[0][2], PUMP_VECTORS[2][2]]


def test_a_frame_that_is_not_a_reply_is_a_protocol_error() -> None:
    decoder = HostDecoder()
    decoder.receive_data(encode_safe(b"00Z") + encode_safe(b"00A?Q") + encode_safe(b"00S?XX") + GOOD)
    for reason in ("unknown prompt", "unknown alarm", "unknown command error"):
        with pytest.raises(ProtocolError, match=reason):
            decoder.next_event()
    assert decoder.next_event() == PUMP_VECTORS[0][2]


@pytest.mark.parametrize("data", [b"", b"0S", b"A0S", b"00", b"00A?", b"00A?TT"])
def test_parse_reply_refuses_short_or_malformed_text(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_reply(data)


def test_clear_discards_a_partial_frame() -> None:
    decoder = HostDecoder()
    decoder.receive_data(GOOD[:4])
    assert decoder.next_event() is NEED_DATA
    assert decoder.clear() == GOOD[:4]
    decoder.receive_data(GOOD)
    assert decoder.next_event() == PUMP_VECTORS[0][2]


def test_encode_refuses_what_the_format_cannot_carry() -> None:
    with pytest.raises(ValueError, match="length byte"):
        encode_safe(b"x" * (MAX_SAFE_DATA + 1))
    with pytest.raises(ValueError, match="0-99"):
        encode_command(100, "RUN", mode=Mode.SAFE)
    with pytest.raises(ValueError, match="no error"):
        encode_reply(0, Alarm.RESET, data="x", mode=Mode.SAFE)


# -- tables ---------------------------------------------------------------------------------------


def test_every_code_has_its_meaning_in_words() -> None:
    for prompt in Prompt:
        assert prompt.meaning
    for alarm in Alarm:
        assert alarm.meaning
        assert alarm.label.islower()
    for error in CommandError:
        assert error.meaning
    assert CommandError.OUT_OF_RANGE.meaning == "data out of range"
    assert Alarm.COMMS_TIMEOUT.label == "comms-timeout"


# -- numbers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("60", "60"),
        ("60.0", "60"),
        ("5", "5"),
        ("0.125", "0.125"),
        ("1000", "1000"),
        ("9999", "9999"),
        ("12.34", "12.34"),
        ("0", "0"),
        ("0.000", "0"),
        ("1E+2", "100"),
        ("0.5", "0.5"),
    ],
)
def test_format_number_writes_exactly(value: str, text: str) -> None:
    assert format_number(Decimal(value)) == text


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("12.345", "5 digits"),
        ("10000", "5 digits"),
        ("0.0001", "4 decimals"),
        ("1.2345", "4 decimals"),
        ("-1", "negative"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
    ],
)
def test_format_number_refuses_instead_of_rounding(value: str, reason: str) -> None:
    with pytest.raises(QuantityError, match=reason):
        format_number(Decimal(value), unit="mL/h")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("60", "60.00"),
        ("5", "5.000"),
        ("1000", "1000."),
        ("0.16666", "0.166"),
        ("12.345", "12.34"),
        ("0", "0.000"),
        ("9999.9", "9999."),
    ],
)
def test_format_reading_shows_four_digits(value: str, text: str) -> None:
    assert format_reading(Decimal(value)) == text


def test_parsers() -> None:
    assert parse_number("1000.") == Decimal(1000)
    assert parse_number(".5") == Decimal("0.5")
    with pytest.raises(ValueError, match="not a New Era number"):
        parse_number("1e3")
    assert parse_amount("5.000MH", RATE_UNITS) == Quantity(Decimal("5.000"), "mL/h")
    assert parse_amount("100.0UM", RATE_UNITS).to("mL/h") == Quantity(Decimal("6.0000"), "mL/h")
    assert parse_amount("5.000ML", VOLUME_UNITS) == Quantity(Decimal("5.000"), "mL")
    with pytest.raises(ProtocolError, match="one of"):
        parse_amount("5.000XX", RATE_UNITS)
    assert parse_dispensed("I1.000W0.000ML") == (Quantity(Decimal(1), "mL"), Quantity(Decimal(0), "mL"))
    with pytest.raises(ProtocolError):
        parse_dispensed("1.000ML")
    assert parse_firmware("NE1000V3.928") == ("NE-1000", "3.928")
    with pytest.raises(ProtocolError):
        parse_firmware("V3.928")


# -- properties -----------------------------------------------------------------------------------

printable = st.binary(max_size=60).map(lambda b: bytes(0x20 + (x % 0x5F) for x in b))
statuses = st.one_of(st.sampled_from(Prompt), st.sampled_from(Alarm))


@st.composite
def replies(draw: st.DrawFn) -> tuple[Reply, int, Prompt | Alarm, CommandError | None, str]:
    address = draw(st.integers(0, 99))
    status = draw(statuses)
    error: CommandError | None = None
    data = ""
    if isinstance(status, Prompt):
        if draw(st.booleans()):
            error = draw(st.sampled_from(CommandError))
        else:
            # Reply data never starts with '?' (that is an error) and is printable text.
            data = draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20))
            data = data.lstrip("?")
        reply = Reply(address, status, None, error, data)
    else:
        reply = Reply(address, None, status, None, "")
    return reply, address, status, error, data


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(replies(), st.sampled_from([Mode.SAFE, Mode.BASIC]), st.lists(st.integers(0, 10_000), max_size=8))
def test_reply_round_trip_in_any_split(
    case: tuple[Reply, int, Prompt | Alarm, CommandError | None, str], mode: Mode, cuts: list[int]
) -> None:
    reply, address, status, error, data = case
    wire = encode_reply(address, status, error=error, data=data, mode=mode)
    decoder = HostDecoder(mode=mode)
    events = []
    for chunk in _chunks(wire, cuts):
        decoder.receive_data(chunk)
        while (event := decoder.next_event()) is not NEED_DATA:
            events.append(event)
    assert events == [reply]


@given(printable, st.lists(st.integers(0, 10_000), max_size=8))
def test_command_round_trip_in_any_split(data: bytes, cuts: list[int]) -> None:
    decoder = DeviceDecoder()
    events = []
    for chunk in _chunks(encode_safe(data), cuts):
        decoder.receive_data(chunk)
        while (event := decoder.next_event()) is not NEED_DATA:
            events.append(event)
    assert events == [Command(data, Mode.SAFE)]


def _drain(decoder: HostDecoder | DeviceDecoder, stream: bytes, cuts: list[int]) -> list[object]:
    """Feed ``stream`` in pieces; collect events. Anything but ProtocolError escapes and fails."""
    events: list[object] = []
    for chunk in _chunks(stream, cuts):
        decoder.receive_data(chunk)
        while True:
            try:
                event = decoder.next_event()
            except ProtocolError:
                continue
            if event is NEED_DATA:
                break
            events.append(event)
    return events


garbage = st.binary(max_size=80) | st.lists(
    st.sampled_from([b"\x02", b"\x03", b"\x0d", b"\x00", b"0", b"00S", b"\x02\x07", b"\x02\x30", b"\xff"]),
    max_size=20,
).map(b"".join)


@given(garbage, replies(), st.sampled_from([Mode.SAFE, Mode.BASIC, None]), st.lists(st.integers(0, 200)))
def test_garbage_never_costs_the_next_good_reply(
    noise: bytes,
    case: tuple[Reply, int, Prompt | Alarm, CommandError | None, str],
    mode: Mode | None,
    cuts: list[int],
) -> None:
    reply, address, status, error, data = case
    wire = encode_reply(address, status, error=error, data=data, mode=mode or Mode.SAFE)
    events = _drain(HostDecoder(mode=mode), noise + wire, cuts)
    assert events
    assert events[-1] == reply


@given(garbage, printable, st.lists(st.integers(0, 200)))
def test_garbage_never_costs_the_next_good_command(noise: bytes, data: bytes, cuts: list[int]) -> None:
    events = _drain(DeviceDecoder(), noise + encode_safe(data), cuts)
    assert events
    assert events[-1] == Command(data, Mode.SAFE)


@given(garbage)
def test_garbage_alone_raises_only_protocol_errors(noise: bytes) -> None:
    _drain(HostDecoder(mode=None), noise, [])
    _drain(DeviceDecoder(), noise, [])


@given(st.integers(0, 9999), st.integers(0, 3))
def test_number_round_trip(digits: int, decimals: int) -> None:
    value = Decimal(digits).scaleb(-decimals)
    assert parse_number(format_number(value)) == value


@given(st.decimals(min_value=0, max_value=100_000, allow_nan=False, allow_infinity=False, places=5))
def test_numbers_are_exact_or_refused(value: Decimal) -> None:
    try:
        text = format_number(value)
    except QuantityError:
        return
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["1" * 40 + "MH", "9" * 9 + "MH", "123456789.0UH"])
def test_absurd_readings_are_protocol_errors_not_crashes(text: str) -> None:
    # Found in review: a 40-digit rate raised QuantityError (inexact mL/h conversion) out of the
    # driver and stopped the gateway. It is a broken wire: a ProtocolError, like any bad reply.
    with pytest.raises(ProtocolError, match="more than 8 digits"):
        parse_amount(text, RATE_UNITS)
    with pytest.raises(ProtocolError, match="more than 8 digits"):
        parse_dispensed(f"I{'1' * 40}W0.000ML")
