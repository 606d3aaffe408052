"""The sans-I/O Modbus device side (RTU and TCP framing) and the TCP link that serves it.

Golden vectors first: CRCs and whole frames written out byte for byte (each CRC also computed by
pymodbus, the independent implementation), then the framing rules of Modbus over Serial Line v1.02
(silences, bad CRCs, other units, broadcast) and of MBAP, then property tests: whatever bytes arrive,
in whatever chunks and at whatever times, the devices return bytes and never raise.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU

from pumpgw.drivers.modbus_map import load_builtin_map
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import EnvironmentProblem
from pumpgw.rig.modbus_device import (
    ModbusRtuDevice,
    ModbusTcpDevice,
    RtuMultidrop,
    crc16_modbus,
    respond,
    t35_seconds,
    with_crc,
)
from pumpgw.rig.modbus_pump import EmulatedModbusPump
from pumpgw.rig.tcp_link import TcpDeviceServer

T0 = 1000.0
T35_19200 = 3.5 * 11 / 19200  # 2.005 ms


def make_pump() -> EmulatedModbusPump:
    return EmulatedModbusPump(
        load_builtin_map("rig-multichannel-v1"),
        manufacturer="pumpgw rig",
        model="RIG-MC2",
        serial="RIG-0001",
        firmware="1.0.0",
        library_version=42,
        library_name="ICU adult",
        channels=2,
    )


@pytest.fixture
def pump() -> EmulatedModbusPump:
    return make_pump()


@pytest.fixture
def rtu(pump: EmulatedModbusPump) -> ModbusRtuDevice:
    return ModbusRtuDevice(pump, 1)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# Read input registers 0-1 of unit 1 (the endianness probe, pump-protocols.md §6.1) and the answer.
READ_PROBE = h("01 04 00 00 00 02 71 CB")
PROBE_REPLY = h("01 04 04 AA BB CC DD 3F 20")


# --- CRC ---------------------------------------------------------------------------------------------


def test_crc_golden_vectors() -> None:
    # Read one holding register at 0 from unit 1: the CRC travels low byte first, 84 0A.
    assert crc16_modbus(h("01 03 00 00 00 01")).to_bytes(2, "little") == h("84 0A")
    # The "02 07" example that the Modbus serial documents are reported to use (CRC 0x1241, sent
    # 41 12). Not checked against the specification text itself, which this repository lacks; it
    # agrees with pymodbus, which is what makes it a vector here.
    assert crc16_modbus(h("02 07")) == 0x1241
    assert with_crc(h("02 07")) == h("02 07 41 12")
    # The frames used below, byte for byte.
    assert with_crc(READ_PROBE[:-2]) == READ_PROBE
    assert with_crc(PROBE_REPLY[:-2]) == PROBE_REPLY
    assert crc16_modbus(b"") == 0xFFFF


@given(st.binary(max_size=300))
def test_crc_agrees_with_pymodbus(data: bytes) -> None:
    # pymodbus returns the CRC as the wire bytes read big-endian (its own table-driven code).
    assert crc16_modbus(data).to_bytes(2, "little") == FramerRTU.compute_CRC(data).to_bytes(2, "big")
    # A frame followed by its CRC (low byte first) leaves a CRC of 0: how receivers often check.
    assert crc16_modbus(with_crc(data)) == 0


def test_t35_follows_the_serial_line_spec() -> None:
    assert t35_seconds(19200) == pytest.approx(0.002005, abs=1e-6)
    assert t35_seconds(9600) == pytest.approx(0.004010, abs=1e-6)
    assert t35_seconds(38400) == t35_seconds(115200) == 0.00175  # fixed above 19200 baud
    with pytest.raises(ValueError, match="positive"):
        t35_seconds(0)


# --- RTU framing -------------------------------------------------------------------------------------


def test_rtu_answers_the_golden_request(rtu: ModbusRtuDevice) -> None:
    assert rtu.receive(READ_PROBE, T0) == PROBE_REPLY
    assert rtu.requests == 1


def test_rtu_frame_split_at_every_byte_boundary(pump: EmulatedModbusPump) -> None:
    write = with_crc(h("01 10 00 00 00 02 04 00 07 07 D0"))  # heartbeat 7, comm timeout 2000 ms
    for frame, reply in ((READ_PROBE, PROBE_REPLY), (write, with_crc(h("01 10 00 00 00 02")))):
        for cut in range(1, len(frame)):
            device = ModbusRtuDevice(pump, 1)
            assert device.receive(frame[:cut], T0) == b""
            assert device.receive(frame[cut:], T0) == reply
        device = ModbusRtuDevice(pump, 1)
        assert b"".join(device.receive(frame[i : i + 1], T0) for i in range(len(frame))) == reply
    assert pump.read_holding(0, 2, T0) == [7, 2000]


def test_rtu_back_to_back_frames_in_one_chunk_are_both_answered(rtu: ModbusRtuDevice) -> None:
    assert rtu.receive(READ_PROBE + READ_PROBE, T0) == PROBE_REPLY * 2


def test_rtu_silence_longer_than_t35_discards_a_partial_frame(rtu: ModbusRtuDevice) -> None:
    assert rtu.receive(READ_PROBE[:5], T0) == b""
    assert rtu.receive(READ_PROBE[5:], T0 + T35_19200 * 1.05) == b""  # the start was dropped
    assert rtu.discarded == 1
    # A pause shorter than t3.5 inside a frame is no frame end.
    assert rtu.receive(READ_PROBE[:5], T0 + 1) == b""
    assert rtu.receive(READ_PROBE[5:], T0 + 1 + T35_19200 * 0.95) == PROBE_REPLY


def test_rtu_t35_is_fixed_above_19200_baud(pump: EmulatedModbusPump) -> None:
    fast = ModbusRtuDevice(pump, 1, baudrate=115200)
    assert fast.receive(READ_PROBE[:3], T0) == b""
    assert fast.receive(READ_PROBE[3:], T0 + 0.0017) == PROBE_REPLY
    assert fast.receive(READ_PROBE[:3], T0 + 1) == b""
    assert fast.receive(READ_PROBE[3:], T0 + 1.0018) == b""
    assert fast.discarded == 1


def test_rtu_bad_crc_is_ignored_until_the_next_silence(rtu: ModbusRtuDevice) -> None:
    broken = READ_PROBE[:-1] + bytes([READ_PROBE[-1] ^ 0x01])
    assert rtu.receive(broken, T0) == b""
    assert rtu.crc_errors == 1
    # Bytes with no silence before them still belong to the broken frame: not a request.
    assert rtu.receive(READ_PROBE, T0) == b""
    assert rtu.skipped_bytes == len(READ_PROBE)
    # After a silence the line is clean again.
    assert rtu.receive(READ_PROBE, T0 + 0.01) == PROBE_REPLY


def test_rtu_other_units_are_ignored(pump: EmulatedModbusPump) -> None:
    device = ModbusRtuDevice(pump, 7)
    assert device.receive(READ_PROBE, T0) == b""
    assert device.ignored == 1
    assert device.receive(with_crc(h("07 04 00 00 00 02")), T0) == with_crc(h("07 04 04 AA BB CC DD"))


def test_rtu_broadcast_writes_are_executed_and_never_answered(rtu: ModbusRtuDevice) -> None:
    assert rtu.receive(with_crc(h("00 06 00 00 00 2A")), T0) == b""  # heartbeat 42 to everyone
    assert rtu.broadcasts == 1
    assert rtu.pump.read_holding(0, 1, T0) == [42]
    assert rtu.receive(with_crc(h("00 04 00 00 00 02")), T0) == b""  # a broadcast read: ignored
    assert rtu.ignored == 1


@pytest.mark.parametrize(
    ("request_pdu", "reply_pdu"),
    [
        ("01 00 00 00 01", "81 01"),  # read coils: the map has none (§6.1)
        ("2B 0E 01 00", "AB 01"),  # read device identification: not implemented
        ("03 00 00 00 00", "83 03"),  # read 0 registers
        ("04 00 00 00 7E", "84 03"),  # read 126 registers
        ("04 00 3C 00 01", "84 02"),  # IR 60: outside the system block
        ("04 03 E8 00 3A", "84 02"),  # B+0…B+57 of channel 1: runs off the block
        ("03 00 00 00 04", "03 08 00 00 00 00 00 00 00 00"),  # HR 0-3, all 0 at power-up
        ("06 00 05 00 01", "86 02"),  # HR 5: no such holding register
        ("06 00 02 00 02", "86 03"),  # comm-loss policy 2: not a policy
        ("10 00 00 00 02 02 00 01", "90 03"),  # byte count 2 for 2 registers
        ("10 00 00 00 7C 02 00 01", "90 03"),  # 124 registers in one FC16
        ("10 03 F2 00 01 02 00 01", "90 02"),  # B+10, an input register, is not writable
        ("06 00 03 00 01", "06 00 03 00 01"),  # request remote control: the reply echoes
    ],
)
def test_rtu_exception_responses(rtu: ModbusRtuDevice, request_pdu: str, reply_pdu: str) -> None:
    assert rtu.receive(with_crc(h("01" + request_pdu)), T0) == with_crc(h("01" + reply_pdu))


def test_rtu_unknown_function_is_answered_once_its_crc_is_complete(rtu: ModbusRtuDevice) -> None:
    frame = with_crc(h("01 2B 0E 01 00"))
    assert rtu.receive(frame[:-1], T0) == b""  # no valid CRC at the end yet: keep listening
    assert rtu.receive(frame[-1:], T0) == with_crc(h("01 AB 01"))
    assert rtu.receive(READ_PROBE, T0 + 0.01) == PROBE_REPLY


def test_rtu_never_buffers_more_than_one_adu(rtu: ModbusRtuDevice) -> None:
    assert rtu.receive(h("01 41") + bytes(300), T0) == b""  # unknown function, no CRC anywhere
    assert rtu.discarded == 1
    assert rtu.receive(h("01 10 00 00 00 7F FE"), T0 + 1) == b""  # a byte count no frame can have
    assert rtu.discarded == 2
    assert rtu.receive(READ_PROBE, T0 + 2) == PROBE_REPLY


def test_rtu_unit_ids_are_checked(pump: EmulatedModbusPump) -> None:
    for bad in (0, 248, 255):
        with pytest.raises(ValueError, match="1…247"):
            ModbusRtuDevice(pump, bad)
    with pytest.raises(ValueError, match="share a unit id"):
        RtuMultidrop(ModbusRtuDevice(pump, 1), ModbusRtuDevice(pump, 1))


def test_multidrop_answers_from_the_addressed_unit_only() -> None:
    one, two = make_pump(), make_pump()
    line = RtuMultidrop(ModbusRtuDevice(one, 1), ModbusRtuDevice(two, 2))
    assert line.receive(with_crc(h("02 06 00 00 00 05")), T0) == with_crc(h("02 06 00 00 00 05"))
    assert (one.read_holding(0, 1, T0), two.read_holding(0, 1, T0)) == ([0], [5])
    assert line.receive(READ_PROBE, T0) == PROBE_REPLY


def test_a_pump_failure_is_exception_4_not_a_crash(
    rtu: ModbusRtuDevice, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fall_over(address: int, count: int, now: float) -> list[int]:
        raise ArithmeticError("the pump's firmware fell over")

    monkeypatch.setattr(rtu.pump, "read_input", fall_over)
    assert rtu.receive(READ_PROBE, T0) == with_crc(h("01 84 04"))
    assert rtu.device_failures == 1
    assert "fell over" in caplog.text


# --- MBAP (TCP) framing ------------------------------------------------------------------------------

TCP_PROBE = h("12 34 00 00 00 06 01 04 00 00 00 02")
TCP_PROBE_REPLY = h("12 34 00 00 00 07 01 04 04 AA BB CC DD")


def test_mbap_golden_exchange(pump: EmulatedModbusPump) -> None:
    device = ModbusTcpDevice(pump, 1)
    assert device.receive(TCP_PROBE, T0) == TCP_PROBE_REPLY
    # The transaction id is echoed whatever it is; an exception keeps the MBAP framing.
    assert device.receive(h("FF FE 00 00 00 06 01 04 00 3C 00 01"), T0) == h("FF FE 00 00 00 03 01 84 02")


def test_mbap_split_at_every_byte_boundary_and_batched(pump: EmulatedModbusPump) -> None:
    for cut in range(1, len(TCP_PROBE)):
        device = ModbusTcpDevice(pump, 1)
        assert device.receive(TCP_PROBE[:cut], T0) == b""
        assert device.receive(TCP_PROBE[cut:], T0) == TCP_PROBE_REPLY
    device = ModbusTcpDevice(pump, 1)
    second = h("00 02 00 00 00 06 01 04 00 05 00 01")
    assert device.receive(TCP_PROBE + second, T0) == TCP_PROBE_REPLY + h("00 02 00 00 00 05 01 04 02 00 02")


def test_mbap_unit_ids(pump: EmulatedModbusPump) -> None:
    device = ModbusTcpDevice(pump, 1)
    for unit in (0x00, 0xFF):  # "non-significant" on TCP: answered as the device itself
        request = TCP_PROBE[:6] + bytes([unit]) + TCP_PROBE[7:]
        assert device.receive(request, T0) == TCP_PROBE_REPLY[:6] + bytes([unit]) + TCP_PROBE_REPLY[7:]
    other = TCP_PROBE[:6] + b"\x07" + TCP_PROBE[7:]
    assert device.receive(other, T0) == h("12 34 00 00 00 03 07 84 0B")  # gateway target failed
    with pytest.raises(ValueError, match="one byte"):
        ModbusTcpDevice(pump, 256)


def test_mbap_drops_other_protocols_and_bad_lengths(pump: EmulatedModbusPump) -> None:
    device = ModbusTcpDevice(pump, 1)
    not_modbus = h("00 01 00 01 00 06 01 04 00 00 00 02")
    assert device.receive(not_modbus + TCP_PROBE, T0) == TCP_PROBE_REPLY
    assert device.dropped == 1
    for length in ("00 01", "00 FF", "FF FF"):
        assert device.receive(h(f"00 01 00 00 {length} 01 04") + TCP_PROBE, T0) == b""
    assert device.framing_errors == 3
    assert device.receive(TCP_PROBE, T0) == TCP_PROBE_REPLY  # the stream is in step again


def test_respond_handles_an_empty_pdu(pump: EmulatedModbusPump) -> None:
    assert respond(pump, b"", T0) == h("80 01")


# --- property tests: nothing raises, nothing hangs ---------------------------------------------------

_VALID_FRAMES = [
    READ_PROBE,
    with_crc(h("01 03 00 00 00 04")),
    with_crc(h("01 06 00 00 00 01")),
    with_crc(h("01 06 00 03 00 01")),
    with_crc(h("01 10 00 00 00 02 04 00 07 00 01")),
    # A whole command area for channel 1 (B+60…B+73: 14 registers, 28 bytes): apply-program at
    # 60 mL/h, no VTBI, no drug, concentration NaN, sequence 1, the token.
    with_crc(
        h("01 10 04 24 00 0E 1C")
        + h("42 70 00 00  00 00 00 00  00 00 00 00  7F C0 00 00  00 00  00 00")
        + h("00 00 00 01  00 01  55 55")
    ),
    with_crc(h("01 04 03 E8 00 39")),
    with_crc(h("00 06 00 00 00 09")),
    with_crc(h("02 04 00 00 00 02")),
]


def chunks_at_times(data: bytes, cuts: list[int], gaps: list[float]) -> list[tuple[bytes, float]]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    now, out = T0, []
    for i, (a, b) in enumerate(itertools.pairwise(points)):
        now += gaps[i % len(gaps)] if gaps else 0.0
        out.append((data[a:b], now))
    return out


@st.composite
def mutated_stream(draw: st.DrawFn) -> bytes:
    frames = draw(st.lists(st.sampled_from(_VALID_FRAMES), min_size=1, max_size=6))
    stream = bytearray(b"".join(frames))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "garbage"]))
        at = draw(st.integers(0, max(0, len(stream) - 1)))
        if kind == "flip" and stream:
            stream[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            stream[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and stream:
            del stream[at]
        else:
            stream += draw(st.binary(max_size=40))
    return bytes(stream)


_streams = st.one_of(st.binary(max_size=600), mutated_stream())
_cuts = st.lists(st.integers(0, 700), max_size=30)
_gaps = st.lists(st.sampled_from([0.0, 0.0001, 0.0019, 0.0021, 0.5, 3600.0]), max_size=10)


def reply_frames(data: bytes) -> list[bytes]:
    """Split what a device sent into response frames by their own length rules (MAP §6)."""
    frames = []
    while data:
        function = data[1]
        if function & 0x80:
            size = 5  # unit, function, exception code, CRC
        elif function in (3, 4):
            size = 5 + data[2]  # unit, function, byte count, data, CRC
        else:
            size = 8  # FC06 and FC16: unit, function, address, value or quantity, CRC
        frames.append(data[:size])
        data = data[size:]
    return frames


@settings(max_examples=300, deadline=None)
@given(_streams, _cuts, _gaps, st.sampled_from([1, 2, 247]))
def test_rtu_device_never_raises(data: bytes, cuts: list[int], gaps: list[float], unit: int) -> None:
    device = ModbusRtuDevice(make_pump(), unit)
    for chunk, now in chunks_at_times(data, cuts, gaps):
        reply = device.receive(chunk, now)
        assert isinstance(reply, bytes)
        for frame in reply_frames(reply):  # whatever it answers are frames of its own
            assert frame[0] == unit
            assert crc16_modbus(frame) == 0
    assert len(device._buffer) <= 256


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_VALID_FRAMES), min_size=1, max_size=8), _gaps)
def test_rtu_every_answer_is_a_valid_frame_from_this_unit(frames: list[bytes], gaps: list[float]) -> None:
    device = ModbusRtuDevice(make_pump(), 1)
    now = T0
    for i, frame in enumerate(frames):
        now += 0.01 + (gaps[i % len(gaps)] if gaps else 0.0)  # one request at a time, as a master sends
        reply = device.receive(frame, now)
        if frame[0] == 1:
            assert reply[0] == 1
            assert crc16_modbus(reply) == 0
        else:
            assert reply == b""


@st.composite
def mbap_stream(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        pdu = draw(
            st.one_of(st.binary(min_size=1, max_size=20), st.sampled_from([f[1:-2] for f in _VALID_FRAMES]))
        )
        length = draw(st.one_of(st.just(len(pdu) + 1), st.integers(0, 0xFFFF)))
        header = draw(st.binary(min_size=2, max_size=2)) + draw(st.sampled_from([b"\0\0", b"\0\1"]))
        parts.append(
            header + length.to_bytes(2, "big") + draw(st.sampled_from([b"\x01", b"\xff", b"\x09"])) + pdu
        )
    return b"".join(parts)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=600), mbap_stream()), _cuts)
def test_tcp_device_never_raises(data: bytes, cuts: list[int]) -> None:
    device = ModbusTcpDevice(make_pump(), 1)
    for chunk, now in chunks_at_times(data, cuts, [0.5]):
        assert isinstance(device.receive(chunk, now), bytes)
    assert len(device._buffer) < 6 + 254


# --- the TCP link ------------------------------------------------------------------------------------


@pytest.fixture
async def tcp_server(pump: EmulatedModbusPump) -> AsyncIterator[TcpDeviceServer]:
    async with TcpDeviceServer(lambda: ModbusTcpDevice(pump, 1), FakeClock()) as server:
        yield server


async def ended(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (by FIN or by reset)."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True


async def exchange(port: int, request: bytes) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    header = await reader.readexactly(6)
    reply = header + await reader.readexactly(int.from_bytes(header[4:6], "big"))
    return reply, reader, writer


async def test_tcp_link_keeps_framing_per_connection(tcp_server: TcpDeviceServer) -> None:
    r1, w1 = await asyncio.open_connection("127.0.0.1", tcp_server.port)
    w1.write(TCP_PROBE[:9])  # half a request on connection 1 ...
    reply, _, w2 = await exchange(tcp_server.port, TCP_PROBE)  # ... does not disturb connection 2
    assert reply == TCP_PROBE_REPLY
    w1.write(TCP_PROBE[9:])
    assert await r1.readexactly(len(TCP_PROBE_REPLY)) == TCP_PROBE_REPLY
    assert tcp_server.connections == 2
    assert tcp_server.accepted == 2
    for w in (w1, w2):
        w.close()


async def test_tcp_link_drop_connections_and_stop(tcp_server: TcpDeviceServer) -> None:
    reply, reader, writer = await exchange(tcp_server.port, TCP_PROBE)
    assert reply == TCP_PROBE_REPLY
    assert tcp_server.drop_connections() == 1
    assert tcp_server.connections == 0
    assert await ended(reader)
    writer.close()
    # Still listening: a client reconnects.
    again, reader, writer = await exchange(tcp_server.port, TCP_PROBE)
    assert again == TCP_PROBE_REPLY
    port = tcp_server.port
    await tcp_server.stop()  # closes the client connection too
    assert tcp_server.connections == 0
    assert await ended(reader)
    writer.close()
    await tcp_server.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_tcp_link_start_errors(pump: EmulatedModbusPump) -> None:
    server = TcpDeviceServer(lambda: ModbusTcpDevice(pump, 1), FakeClock())
    await server.start()
    with pytest.raises(RuntimeError, match="already running"):
        await server.start()
    with pytest.raises(EnvironmentProblem, match="cannot listen"):
        await TcpDeviceServer(lambda: ModbusTcpDevice(pump, 1), FakeClock(), port=server.port).start()
    port = server.port
    await server.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # released
