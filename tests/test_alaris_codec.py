"""The Alaris codec against the protocol document's golden bytes, then properties.

Golden vectors: shared/reference/pump-protocols.md §3. The 12 constants of MDPNP ``Asena.java`` are
[verified] there (recomputed with ``binascii.crc_hqx`` against the constants in that file); three
more frames and the security-code example are [computed] by the reference's author with the
algorithm the sources describe. Neither was produced by this code, so the driver and the emulator
cannot drift together.

Pump replies: MDPNP's simulators (``interop-lab/demo-apps/.../alaris/SingleSimAlaris.java`` and
``interop-lab/demo-devices/.../neurowave/AlarisToNeurowave.java``) send fixed replies whose comments
quote an Alaris GH ("Response from Alaris is ..."); those whose CRC checks out are vectors for the
host side here. They are not in the reference: each was checked with ``binascii.crc_hqx`` when this
file was written.
"""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pumpgw.drivers.alaris_codec import (
    ERROR_REPLY,
    MAX_FRAME_BYTES,
    MAX_MESSAGE_BYTES,
    NEED_DATA,
    Alarm,
    Command,
    DeviceDecoder,
    ErrorCode,
    ErrorReply,
    HostDecoder,
    InfStatus,
    InfusionMode,
    Reply,
    crc16_ccitt_false,
    encode_error,
    encode_frame,
    encode_message,
    format_rate,
    format_volume,
    parse_alarms,
    parse_decimal,
    parse_frame,
    parse_inf,
    parse_rate,
    parse_remote,
    parse_volume,
    parse_vtbi,
    rate_fields,
    remote_fields,
    security_code,
    vtbi_command,
    vtbi_reply,
)
from pumpgw.gateway.errors import ProtocolError, QuantityError
from pumpgw.gateway.quantity import Quantity

# -- golden vectors, shared/reference/pump-protocols.md §3 ----------------------------------------

#: The 12 constants of MDPNP Asena.java, [verified] in the reference (each followed by CR).
VERIFIED = [
    (b"!INF|4961\r", ("INF",)),
    (b"!COMMS_PROTOCOL|E8DA\r", ("COMMS_PROTOCOL",)),
    (b"!INST_SERIALNO|457D\r", ("INST_SERIALNO",)),
    (b"!INF_BOLUS^ENABLED|E288\r", ("INF_BOLUS", "ENABLED")),
    (b"!INF_VTBI|8456\r", ("INF_VTBI",)),
    (b"!INF_VTBI^ACTIV^11.000^ml^STOP|4433\r", ("INF_VTBI", "ACTIV", "11.000", "ml", "STOP")),
    (b"!INF_VTBI^DEACT|D8C5\r", ("INF_VTBI", "DEACT")),
    (b"!REMQUERY^DEACT|F295\r", ("REMQUERY", "DEACT")),
    (b"!REMOTE_CTRL^DISABLED|EF95\r", ("REMOTE_CTRL", "DISABLED")),
    (b"!INF_START|38F3\r", ("INF_START",)),
    (b"!INF_STOP|CD57\r", ("INF_STOP",)),
    (b"!REMOTE_CTRL^ENABLED^3CC1|B1F1\r", ("REMOTE_CTRL", "ENABLED", "3CC1")),
]
#: [computed] in the reference.
COMPUTED = [
    (b"!INF_RATE^5.00^ml/h|1BAA\r", ("INF_RATE", "5.00", "ml/h")),
    (b"!INF_VI|B42C\r", ("INF_VI",)),
    (b"!REMOTE_CFG^DISABLED|F4B1\r", ("REMOTE_CFG", "DISABLED")),
    (b"!REMOTE_CTRL^ENABLED^A12B|DD18\r", ("REMOTE_CTRL", "ENABLED", "A12B")),  # serial 12345678
]
HOST_FRAMES = VERIFIED + COMPUTED

#: Replies quoted by MDPNP's simulators (see the module docstring); CRCs checked.
PUMP_REPLIES = [
    (b"!INST_SERIALNO^8002-51740|050B\r", ("INST_SERIALNO", "8002-51740")),
    (b"!COMMS_PROTOCOL^Asena Rev 2.1.5|661A\r", ("COMMS_PROTOCOL", "Asena Rev 2.1.5")),
    (
        b"!REMOTE_CTRL^ENABLED^****^PERMIT^0^ms|7BB0\r",
        ("REMOTE_CTRL", "ENABLED", "****", "PERMIT", "0", "ms"),
    ),
    (
        b"!REMOTE_CTRL^DISABLED^****^PERMIT^0^ms|3C5D\r",
        ("REMOTE_CTRL", "DISABLED", "****", "PERMIT", "0", "ms"),
    ),
    (b"!COMMS_RESPONSE_MAX^4000^ms|DFDF\r", ("COMMS_RESPONSE_MAX", "4000", "ms")),
    (b"!INF_RATE^0.10^ml/h|D407\r", ("INF_RATE", "0.10", "ml/h")),
    (b"!ALARM^AL_NOALM^ ^ |C73B\r", ("ALARM", "AL_NOALM", " ", " ")),
    (b"!REMQUERY^DEACT^^^^|E5C9\r", ("REMQUERY", "DEACT", "", "", "", "")),
    (b"!INF_VI_CLEAR|A706\r", ("INF_VI_CLEAR",)),
    (b"!SYRINGE_STATUS^BD PLASTIPAK^ 50^CONF|1CF8\r", ("SYRINGE_STATUS", "BD PLASTIPAK", " 50", "CONF")),
    (b"!INF_RATE_MAX_SYRINGE^1200.00^ml/h|8575\r", ("INF_RATE_MAX_SYRINGE", "1200.00", "ml/h")),
]


def test_crc_check_value() -> None:
    # The CRC-16/CCITT-FALSE check value (reference §3).
    assert crc16_ccitt_false(b"123456789") == 0x29B1


def test_there_are_twelve_verified_vectors() -> None:
    assert len(VERIFIED) == 12
    assert len({frame for frame, _ in VERIFIED}) == 12


@pytest.mark.parametrize(("frame", "fields"), HOST_FRAMES)
def test_host_frames_encode(frame: bytes, fields: tuple[str, ...]) -> None:
    assert encode_frame(fields) == frame


@pytest.mark.parametrize(("frame", "fields"), HOST_FRAMES)
def test_host_frames_decode_on_the_device_side(frame: bytes, fields: tuple[str, ...]) -> None:
    decoder = DeviceDecoder()
    decoder.receive_data(frame)
    assert decoder.next_event() == Command(fields)
    assert decoder.next_event() is NEED_DATA
    assert parse_frame(frame) == fields


@pytest.mark.parametrize(("frame", "fields"), PUMP_REPLIES)
def test_pump_replies_decode_on_the_host_side(frame: bytes, fields: tuple[str, ...]) -> None:
    decoder = HostDecoder()
    decoder.receive_data(frame)
    assert decoder.next_event() == Reply(fields)
    assert decoder.next_event() is NEED_DATA
    assert encode_frame(fields) == frame


def test_the_builders_make_the_vectors() -> None:
    assert encode_frame(vtbi_command(Decimal(11))) == b"!INF_VTBI^ACTIV^11.000^ml^STOP|4433\r"
    assert encode_frame(vtbi_command(None)) == b"!INF_VTBI^DEACT|D8C5\r"
    assert encode_frame(rate_fields(Decimal(5))) == b"!INF_RATE^5.00^ml/h|1BAA\r"
    assert encode_frame(remote_fields("REMOTE_CTRL", None)) == b"!REMOTE_CTRL^DISABLED|EF95\r"
    assert encode_frame(remote_fields("REMOTE_CFG", None)) == b"!REMOTE_CFG^DISABLED|F4B1\r"
    assert (
        encode_frame(remote_fields("REMOTE_CTRL", security_code("12345678")))
        == b"!REMOTE_CTRL^ENABLED^A12B|DD18\r"
    )


def test_security_code() -> None:
    # [computed] in the reference: serial 12345678 -> A12B.
    assert security_code("12345678") == "A12B"
    # The verified constant REMOTE_CTRL^ENABLED^3CC1 is the code of 8002-51740, the serial number
    # MDPNP's simulators report (its INST_SERIALNO reply is a vector above).
    assert security_code("8002-51740") == "3CC1"
    assert security_code("") == "FFFF"  # CRC of nothing is the initial value
    with pytest.raises(ValueError, match="not ASCII"):
        security_code("12345é")


# -- framing --------------------------------------------------------------------------------------

GOOD = COMPUTED[0][0]  # !INF_RATE^5.00^ml/h|1BAA\r
GOOD_REPLY = Reply(COMPUTED[0][1])
STREAM = GOOD + VERIFIED[0][0]


def test_a_stream_split_at_every_byte_boundary_decodes_the_same() -> None:
    expected = [Reply(COMPUTED[0][1]), Reply(VERIFIED[0][1])]
    for cut in range(len(STREAM) + 1):
        decoder = HostDecoder()
        events = []
        for chunk in (STREAM[:cut], STREAM[cut:]):
            decoder.receive_data(chunk)
            while (event := decoder.next_event()) is not NEED_DATA:
                events.append(event)
        assert events == expected, cut


def test_byte_by_byte() -> None:
    decoder = DeviceDecoder()
    events = []
    for byte in STREAM:
        decoder.receive_data(bytes((byte,)))
        while (event := decoder.next_event()) is not NEED_DATA:
            events.append(event)
    assert events == [Command(COMPUTED[0][1]), Command(VERIFIED[0][1])]
    assert decoder.buffered == 0


def test_noise_between_frames_is_skipped_and_counted() -> None:
    decoder = HostDecoder()
    decoder.receive_data(b"\x00\xff\r\n" + GOOD + b"junk\x1b" + GOOD)
    assert decoder.next_event() == GOOD_REPLY
    assert decoder.next_event() == GOOD_REPLY
    assert decoder.next_event() is NEED_DATA
    assert decoder.noise_bytes == 9


def test_esc_discards_the_partial_frame() -> None:
    # INFUPY: ESC is "premature termination".
    decoder = HostDecoder()
    decoder.receive_data(b"!INF^12345678^-^INFU")
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"\x1b" + GOOD)
    assert decoder.next_event() == GOOD_REPLY
    assert decoder.next_event() is NEED_DATA
    assert decoder.aborted == 1


def test_esc_in_place_of_the_cr_aborts_the_frame() -> None:
    decoder = DeviceDecoder()
    decoder.receive_data(GOOD[:-1] + b"\x1b")
    assert decoder.next_event() is NEED_DATA
    assert decoder.buffered == 0
    assert decoder.aborted == 1


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (GOOD[:-2] + b"B\r", "does not match"),  # 1BAA -> 1BAB
        (GOOD.replace(b"5.00", b"5.01"), "does not match"),
        (GOOD[:-5] + b"1baa\r", "lower case"),
        (GOOD[:-5] + b"1BAG\r", "not 4 hex digits"),
        (b"!INF_RATE^5.00^ml/h1BAA\r", "no '|'"),
        (b"!INF|49611\r", "no '|'"),
        (b"!INF^\x07|4961\r", "inside a frame"),
        (b"!INF^\xe9|4961\r", "inside a frame"),
        (b"!INF^5.00", "new '!'"),  # lost its end: the next frame begins
        (b"!inf|" + f"{crc16_ccitt_false(b'inf'):04X}".encode() + b"\r", "not a command name"),
        (b"!|FFFF\r", "not a command name"),
        (
            b"!INF_RATE^a|b|" + f"{crc16_ccitt_false(b'INF_RATE^a|b'):04X}".encode() + b"\r",
            "inside a message",
        ),
    ],
)
def test_a_bad_frame_raises_once_and_the_next_frame_decodes(bad: bytes, reason: str) -> None:
    for decoder in (HostDecoder(), DeviceDecoder()):
        decoder.receive_data(bad + GOOD)
        with pytest.raises(ProtocolError, match=reason) as caught:
            decoder.next_event()
        assert caught.value.data
        event = decoder.next_event()
        assert isinstance(event, Reply | Command)
        assert event.fields == GOOD_REPLY.fields
        assert decoder.next_event() is NEED_DATA


def test_an_overlong_frame_is_refused_without_waiting_for_its_end() -> None:
    decoder = HostDecoder()
    decoder.receive_data(b"!" + b"A" * (MAX_FRAME_BYTES + 10))
    with pytest.raises(ProtocolError, match=f"no CR within {MAX_FRAME_BYTES}"):
        decoder.next_event()
    assert decoder.next_event() is NEED_DATA
    assert decoder.buffered == 0  # the rest was noise: no '!' in it
    decoder.receive_data(GOOD)
    assert decoder.next_event() == GOOD_REPLY


def test_the_longest_frame_is_accepted() -> None:
    fields = ("X", "A" * (MAX_MESSAGE_BYTES - 2))
    frame = encode_frame(fields)
    assert len(frame) == MAX_FRAME_BYTES
    decoder = HostDecoder()
    decoder.receive_data(frame)
    assert decoder.next_event() == Reply(fields)


def test_clear_discards_a_partial_frame() -> None:
    decoder = HostDecoder()
    decoder.receive_data(GOOD[:7])
    assert decoder.next_event() is NEED_DATA
    assert decoder.clear() == GOOD[:7]
    decoder.receive_data(GOOD)
    assert decoder.next_event() == GOOD_REPLY


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ((), "command name"),
        (("",), "command name"),
        (("INF", "a^b"), "'\\^'"),
        (("INF", "a|b"), "'\\|'"),
        (("INF", "!"), "'!'"),
        (("INF", "\r"), "'\\\\r'"),
        (("INF", "\x1b"), "'\\\\x1b'"),
        (("INF", "é"), "'é'"),
        (("INF", "A" * MAX_MESSAGE_BYTES), "at most"),
    ],
)
def test_encode_refuses_what_a_frame_cannot_carry(fields: tuple[str, ...], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        encode_frame(fields)


# -- the error reply (our format) ----------------------------------------------------------------


def test_error_replies() -> None:
    frame = encode_error(ErrorCode.NOT_REMOTE, "INF_START", "take remote control first")
    assert frame.startswith(b"!ERROR^NOT_REMOTE^INF_START^take remote control first|")
    decoder = HostDecoder()
    decoder.receive_data(frame + encode_error(ErrorCode.BAD_FRAME, "", "bad ^|! text\x00"))
    assert decoder.next_event() == ErrorReply(ErrorCode.NOT_REMOTE, "INF_START", "take remote control first")
    assert decoder.next_event() == ErrorReply(ErrorCode.BAD_FRAME, "", "bad ??? text?")
    for code in ErrorCode:
        assert code.meaning


@pytest.mark.parametrize(
    "fields",
    [
        (ERROR_REPLY, "NO_SUCH_CODE", "INF", "x"),
        (ERROR_REPLY, "BAD_VALUE"),
        (ERROR_REPLY, "BAD_VALUE", "a", "b", "c"),
    ],
)
def test_a_malformed_error_reply_is_a_protocol_error(fields: tuple[str, ...]) -> None:
    decoder = HostDecoder()
    decoder.receive_data(encode_frame(fields) + GOOD)
    with pytest.raises(ProtocolError, match=r"ERROR|error code"):
        decoder.next_event()
    assert decoder.next_event() == GOOD_REPLY


def test_the_device_side_reads_error_as_a_plain_command() -> None:
    decoder = DeviceDecoder()
    decoder.receive_data(encode_frame((ERROR_REPLY,)))
    assert decoder.next_event() == Command((ERROR_REPLY,))


# -- numbers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rate", "volume"),
    [
        ("5", "5.00", "5.000"),
        ("0.1", "0.10", "0.100"),
        ("1200", "1200.00", "1200.000"),
        ("12.34", "12.34", "12.340"),
        ("0", "0.00", "0.000"),
        ("1E+1", "10.00", "10.000"),
    ],
)
def test_numbers_are_written_exactly(value: str, rate: str, volume: str) -> None:
    assert format_rate(Decimal(value)) == rate
    assert format_volume(Decimal(value)) == volume


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("12.345", "more than 2"),
        ("-1", "negative"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("1E+30", "large"),
    ],
)
def test_a_rate_is_refused_rather_than_rounded(value: str, reason: str) -> None:
    with pytest.raises(QuantityError, match=reason):
        format_rate(Decimal(value))


def test_a_volume_is_refused_rather_than_rounded() -> None:
    assert format_volume(Decimal("0.125")) == "0.125"
    with pytest.raises(QuantityError, match="more than 3"):
        format_volume(Decimal("0.1255"))
    with pytest.raises(QuantityError, match="more than 10 digits"):
        format_volume(Decimal(10**7))  # 10000000.000: a broken value, not a volume


@pytest.mark.parametrize("text", ["", "1e3", "+5", " 5", "5 ", ".5", "5.", "-5", "0x10", "５", "1" * 11])
def test_parse_decimal_takes_plain_numbers_only(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_decimal(text)


def test_parse_decimal() -> None:
    assert parse_decimal("11.000") == Decimal("11.000")
    assert parse_decimal("007") == 7
    assert parse_decimal("-50.00", signed=True) == Decimal("-50.00")


# -- messages: INF, INF_VTBI, INF_RATE, INF_VI, REMOTE_CTRL ---------------------------------------

#: What MDPNP's SingleSimAlaris answers to INF (its layout of the fields MDPNP's Asena.java reads).
MDPNP_INF = "INF^8002-51740^-^SET^0.10^ml/h^^0.000^ml^17.91^mmHg^24+^EVENT^127904"


def test_parse_inf_as_mdpnp_sends_it() -> None:
    status = parse_inf(tuple(MDPNP_INF.split("^"))[1:])
    assert status == InfStatus(
        serial="8002-51740",
        alarms=(),
        mode="SET",
        rate=Quantity(Decimal("0.10"), "mL/h"),
        volume_infused=Quantity(Decimal("0.000"), "mL"),
        pressure=Quantity(Decimal("17.91"), "mm[Hg]"),
        time_remaining="24+",
        log_type="EVENT",
        log_entry="127904",
    )
    assert status.infusion_mode is None  # SET is not one of ours: the driver shows UNKNOWN
    assert "^".join(status.fields()) == MDPNP_INF


def test_inf_round_trip_with_alarms_and_no_pressure() -> None:
    status = InfStatus(
        serial="12345678",
        alarms=("OCCLUSION", "BATTERY_LOW"),
        mode=InfusionMode.ALARM.value,
        rate=Quantity(Decimal("0.00"), "mL/h"),
        volume_infused=Quantity(Decimal("1.234"), "mL"),
        pressure=None,
        time_remaining="",
        log_type="EVENT",
        log_entry="7",
    )
    fields = status.fields()
    assert fields[2] == "OCCLUSION,BATTERY_LOW"
    assert parse_frame(encode_frame(fields))[1:] == fields[1:]
    assert parse_inf(fields[1:]) == status
    assert parse_inf(fields[1:]).infusion_mode is InfusionMode.ALARM


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, "13 fields"),
        ({4: "5,00"}, "plain decimal"),
        ({5: "ml/min"}, "unit"),
        ({8: "ml/h"}, "unit"),
        ({2: "occlusion"}, "alarm name"),
        ({10: "mm"}, "unit"),
    ],
)
def test_a_malformed_inf_is_a_protocol_error(change: dict[int, str], reason: str) -> None:
    fields = MDPNP_INF.split("^")
    for index, value in change.items():
        fields[index] = value
    args = fields[1:] if change else fields[1:-1]
    with pytest.raises(ProtocolError, match=reason):
        parse_inf(args)


def test_alarm_field() -> None:
    assert parse_alarms("-") == ()
    assert parse_alarms("") == ()
    assert parse_alarms("OCCLUSION,NEW_ALARM_7") == ("OCCLUSION", "NEW_ALARM_7")
    with pytest.raises(ProtocolError):
        parse_alarms("OCCLUSION,")


def test_vtbi_rate_volume_and_remote_replies() -> None:
    assert parse_vtbi(("ACTIV", "11.000", "ml", "STOP")) == Quantity(Decimal("11.000"), "mL")
    assert parse_vtbi(("DEACT", "", "", "")) is None
    assert vtbi_reply(None) == ("INF_VTBI", "DEACT", "", "", "")
    assert vtbi_reply(Decimal("0.5")) == ("INF_VTBI", "ACTIV", "0.500", "ml", "STOP")
    for bad in [
        ("ACTIV", "11.000", "ml", "KVO"),
        ("ACTIV", "11", "l", "STOP"),
        ("DEACT",),
        ("DEACT", "1", "", ""),
    ]:
        with pytest.raises(ProtocolError):
            parse_vtbi(bad)
    assert parse_rate(("0.10", "ml/h")) == Quantity(Decimal("0.10"), "mL/h")
    with pytest.raises(ProtocolError):
        parse_rate(("0.10",))
    assert parse_volume(("1.500", "ml")) == Quantity(Decimal("1.500"), "mL")
    with pytest.raises(ProtocolError):
        parse_volume(("1.500", "ul"))
    assert parse_remote(("ENABLED", "****", "PERMIT", "0", "ms")) is True
    assert parse_remote(("DISABLED",)) is False
    with pytest.raises(ProtocolError):
        parse_remote(())


def test_alarm_table() -> None:
    for alarm in Alarm:
        assert alarm.label == alarm.label.lower()
        assert "_" not in alarm.label
        assert alarm.meaning
        assert Alarm.from_label(alarm.label) is alarm
    assert [a.label for a in Alarm if a.stops_infusion] == [
        "occlusion",
        "air-in-line",
        "syringe-empty",
        "door-open",
    ]
    with pytest.raises(ValueError, match="unknown alarm"):
        Alarm.from_label("fire")


# -- properties -----------------------------------------------------------------------------------

names = st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True)
field_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="^|!"), max_size=12
)
field_lists = st.tuples(names, st.lists(field_text, max_size=8)).map(lambda t: (t[0], *t[1]))


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _drain(decoder: HostDecoder | DeviceDecoder, stream: bytes, cuts: list[int]) -> list[object]:
    """Feed ``stream`` in pieces and collect events. Anything but ProtocolError escapes and fails;
    the loop ends because every ProtocolError consumes at least one byte."""
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
        assert decoder.buffered < MAX_FRAME_BYTES  # at most one partial frame is held
    return events


@given(field_lists, st.lists(st.integers(0, 10_000), max_size=8))
def test_round_trip_in_any_split(fields: tuple[str, ...], cuts: list[int]) -> None:
    wire = encode_frame(fields)
    assert _drain(HostDecoder(), wire, cuts) == [Reply(fields)]
    assert _drain(DeviceDecoder(), wire, cuts) == [Command(fields)]
    assert encode_message(fields).decode() == "^".join(fields)


garbage = st.binary(max_size=300) | st.lists(
    st.sampled_from(
        [b"!", b"\r", b"|", b"^", b"\x1b", b"\x00", b"INF", b"4961", b"|4961\r", b"\xff", b"A" * 40]
    ),
    max_size=30,
).map(b"".join)


@given(garbage, st.lists(st.integers(0, 400), max_size=8))
def test_random_bytes_raise_only_protocol_errors(noise: bytes, cuts: list[int]) -> None:
    _drain(HostDecoder(), noise, cuts)
    _drain(DeviceDecoder(), noise, cuts)


@given(garbage, field_lists, st.lists(st.integers(0, 400), max_size=8))
def test_garbage_never_costs_the_next_good_frame(
    noise: bytes, fields: tuple[str, ...], cuts: list[int]
) -> None:
    events = _drain(HostDecoder(), noise + encode_frame(fields), cuts)
    assert events
    assert events[-1] == Reply(fields)


@given(field_lists, st.data())
def test_a_frame_with_one_byte_changed_never_decodes_as_another_message(
    fields: tuple[str, ...], data: st.DataObject
) -> None:
    wire = bytearray(encode_frame(fields))
    position = data.draw(st.integers(0, len(wire) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != wire[position]))
    wire[position] = value
    sentinel = VERIFIED[0]
    for decoder in (HostDecoder(), DeviceDecoder()):
        events = _drain(decoder, bytes(wire) + sentinel[0], [])
        # CRC-16 catches every change of up to 16 bits in the message; a changed CRC digit no
        # longer matches; a changed '!', '|' or CR breaks the frame. Only the sentinel gets through.
        assert [e.fields for e in events if isinstance(e, Reply | Command)] == [sentinel[1]]


@given(field_lists, st.lists(st.integers(0, 300), min_size=1, max_size=4), st.binary(min_size=1, max_size=4))
def test_inserted_or_deleted_bytes_raise_only_protocol_errors(
    fields: tuple[str, ...], positions: list[int], inserted: bytes
) -> None:
    wire = bytearray(encode_frame(fields) * 2)
    for position in positions:
        at = position % len(wire)
        if position % 2:
            del wire[at]
        else:
            wire[at:at] = inserted
    _drain(HostDecoder(), bytes(wire), positions)
    _drain(DeviceDecoder(), bytes(wire), positions)


@given(st.integers(0, 10**6), st.integers(0, 3))
def test_rates_and_volumes_round_trip_exactly(digits: int, decimals: int) -> None:
    value = Decimal(digits).scaleb(-decimals)
    assert parse_decimal(format_volume(value)) == value
    if decimals <= 2:
        assert parse_decimal(format_rate(value)) == value
    else:
        try:
            assert parse_decimal(format_rate(value)) == value
        except QuantityError:
            assert value.quantize(Decimal("0.01")) != value
