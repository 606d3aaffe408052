"""The device side of Modbus, sans-I/O: RTU and TCP framing around the rig's emulated pump.

Written from the specifications, not from pymodbus, so that the driver (pymodbus) and the emulator
cannot share a mistake: *Modbus Application Protocol Specification v1.1b3* (MAP: the PDU, function
codes 03, 04, 06 and 16, exception responses), *Modbus over Serial Line Specification and
Implementation Guide v1.02* (MSL: RTU framing, CRC, silent intervals, broadcast) and the *Modbus
Messaging on TCP/IP Implementation Guide v1.0b* (the MBAP header).

Both devices have the :class:`~pumpgw.rig.pty_link.ByteDevice` shape, ``receive(data, now) ->
bytes``: serve :class:`ModbusRtuDevice` on a PTY with :class:`~pumpgw.rig.pty_link.PtyDeviceServer`
and :class:`ModbusTcpDevice` on TCP with :class:`~pumpgw.rig.tcp_link.TcpDeviceServer` (one
instance per connection). Neither ever raises, whatever the bytes; a property test holds them to it.

PDU rules (MAP §6.3, §6.4, §6.6, §6.12 and their state diagrams, checked in this order):

* a function code other than 03, 04, 06, 16 → exception 01 (illegal function);
* a quantity outside 1…125 for a read or 1…123 for FC16, a byte count that is not twice the
  quantity, or a PDU whose length does not fit its function code → exception 03 (illegal value);
* an address range the pump does not have → exception 02 (the pump decides, see
  :meth:`~pumpgw.rig.modbus_pump.EmulatedModbusPump.read_input`);
* anything the pump raises (it should not) → exception 04 (server device failure), counted in
  ``device_failures`` and logged.

RTU framing (MSL §2.5.1.1): a frame is unit id, PDU and CRC, delimited by silent intervals of 3.5
character times (t3.5). A request's length follows from its function code (8 bytes for 03, 04 and
06; 9 + byte count for 16), so a frame is complete the moment its last byte arrives, without
waiting for the silence; the silence is what ends a *broken* frame:

* a partial frame followed by a silence longer than t3.5 is discarded (``discarded``);
* a frame with a wrong CRC is not answered (MSL §2.4, slave state diagram: it is discarded) and
  counted in ``crc_errors``; the device then ignores everything until the next silence, because
  the bytes that follow in the same burst belong to the broken frame (parsing them as a new frame
  could execute garbage as a command: for a pump, a retry is much cheaper than a false frame);
* an unknown function code gives no length. The device treats the frame as complete as soon as
  what it holds ends with a valid CRC and answers exception 01 then (waiting for the silence is
  impossible for a device that only runs when bytes arrive); then it ignores bytes until the next
  silence, as after a CRC error. A false CRC match inside a longer unknown frame has a chance of
  1 in 65,536 per chunk and costs one exception reply to a request that was going to fail anyway;
* frames for another unit id are checked and dropped (``ignored``); unit 0 is the broadcast
  address: FC06 and FC16 are executed and never answered, reads are ignored (MSL §2.1: broadcast
  requests are writes and get no reply);
* nothing longer than the 256-byte RTU ADU (MSL §2.5.1.1) is buffered.

t3.5 is 3.5 × 11 bit times (MSL §2.5.1: an RTU character is 11 bits, whatever the parity) up to
19200 baud and a fixed 1.75 ms above (MSL §2.5.1.1). Time is the ``now`` passed in, so a test with a
FakeClock that never moves sees no silence at all, and one that advances by a millisecond sees one.

TCP framing (MBAP header; MAP §4.1 gives the 260-byte maximum ADU): transaction id (echoed),
protocol id (0 = Modbus; a frame with anything else is dropped unanswered, ``dropped``), length
(unit id + PDU, so 2…254; a length outside that means the peer is out of step, and the whole
buffer is dropped, ``framing_errors``), unit id. On TCP the unit id does not select a device
addressed by its IP, so the device answers its own unit id, 0xFF (the value the TCP guide
recommends for such a device) and 0 (which many clients send; TCP is point to point, so 0 is no
broadcast here). Any other unit id is answered with exception 0x0B (gateway target device failed
to respond): what the pymodbus server this replaces answered, and it tells a misconfigured client
at once instead of after its timeout.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

from .modbus_pump import EmulatedModbusPump, ExceptionCode

_LOG = logging.getLogger(__name__)

READ_HOLDING: Final = 0x03
READ_INPUT: Final = 0x04
WRITE_SINGLE: Final = 0x06
WRITE_MULTIPLE: Final = 0x10
#: Limits per request (MAP §6.3, §6.4: 1…125 registers read; §6.12: 1…123 written).
MAX_READ: Final = 125
MAX_WRITE: Final = 123
#: Largest RTU ADU: unit id, 253-byte PDU, CRC (MSL §2.5.1.1).
MAX_RTU_ADU: Final = 256
#: Largest MBAP length field: unit id plus a 253-byte PDU (260-byte ADU minus the 6 header bytes).
MAX_MBAP_LENGTH: Final = 254
#: Exception code a Modbus gateway answers for a unit that does not respond (MAP §7).
GATEWAY_TARGET_FAILED: Final = 0x0B
BROADCAST: Final = 0
#: Unit ids a serial device may have (MSL §2.2: 1…247; 0 is broadcast, 248…255 reserved).
RTU_UNIT_IDS: Final = range(1, 248)
#: Above this baud rate t3.5 is fixed (MSL §2.5.1.1).
_FIXED_TIMING_BAUD: Final = 19200
_FIXED_T35_S: Final = 0.00175
_BITS_PER_CHARACTER: Final = 11


def crc16_modbus(data: bytes) -> int:
    """The Modbus CRC-16 of ``data``: polynomial 0xA001 (0x8005 reflected), initial value 0xFFFF.

    Bit by bit as MSL §6.2.2 describes it (pymodbus uses a table, so the two are independent).
    The result goes on the wire low byte first: ``crc.to_bytes(2, "little")``.
    """
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(frame: bytes) -> bytes:
    """``frame`` with its CRC appended, low byte first, as it travels on an RTU line."""
    return frame + crc16_modbus(frame).to_bytes(2, "little")


def t35_seconds(baudrate: int) -> float:
    """The RTU inter-frame silence t3.5 at ``baudrate`` (MSL §2.5.1.1). Raises ValueError for a
    baud rate that is not positive."""
    if baudrate <= 0:
        raise ValueError(f"baud rate must be positive, got {baudrate}")
    if baudrate > _FIXED_TIMING_BAUD:
        return _FIXED_T35_S
    return 3.5 * _BITS_PER_CHARACTER / baudrate


def exception_pdu(function_code: int, code: int) -> bytes:
    """An exception response PDU: the function code with its high bit set, then the code."""
    return bytes([(function_code | 0x80) & 0xFF, code])


class _FailureCounter(Protocol):
    device_failures: int


def respond(
    pump: EmulatedModbusPump, pdu: bytes, now: float, counter: _FailureCounter | None = None
) -> bytes:
    """The response PDU to request ``pdu`` (function code first), served by ``pump`` at ``now``.
    Never raises: see the module docstring for the exception codes."""
    if not pdu:
        return exception_pdu(0, ExceptionCode.ILLEGAL_FUNCTION)
    function = pdu[0]
    try:
        if function in (READ_HOLDING, READ_INPUT):
            return _read(pump, pdu, now)
        if function == WRITE_SINGLE:
            return _write_single(pump, pdu, now)
        if function == WRITE_MULTIPLE:
            return _write_multiple(pump, pdu, now)
    except Exception:  # noqa: BLE001 - the device must answer; exception 04 is the spec's answer
        _LOG.exception("emulated pump failed on request %s", pdu.hex(" "))
        if counter is not None:
            counter.device_failures += 1
        return exception_pdu(function, ExceptionCode.DEVICE_FAILURE)
    return exception_pdu(function, ExceptionCode.ILLEGAL_FUNCTION)


def _read(pump: EmulatedModbusPump, pdu: bytes, now: float) -> bytes:
    function = pdu[0]
    if len(pdu) != 5:
        return exception_pdu(function, ExceptionCode.ILLEGAL_VALUE)
    address = int.from_bytes(pdu[1:3], "big")
    count = int.from_bytes(pdu[3:5], "big")
    if not 1 <= count <= MAX_READ:
        return exception_pdu(function, ExceptionCode.ILLEGAL_VALUE)
    if function == READ_HOLDING:
        result = pump.read_holding(address, count, now)
    else:
        result = pump.read_input(address, count, now)
    if isinstance(result, ExceptionCode):
        return exception_pdu(function, result)
    data = b"".join(register.to_bytes(2, "big") for register in result)
    return bytes([function, len(data)]) + data


def _write_single(pump: EmulatedModbusPump, pdu: bytes, now: float) -> bytes:
    if len(pdu) != 5:
        return exception_pdu(WRITE_SINGLE, ExceptionCode.ILLEGAL_VALUE)
    address = int.from_bytes(pdu[1:3], "big")
    value = int.from_bytes(pdu[3:5], "big")
    refused = pump.write_holding(address, [value], now)
    if refused is not None:
        return exception_pdu(WRITE_SINGLE, refused)
    return bytes(pdu)  # the normal response echoes the request (MAP §6.6)


def _write_multiple(pump: EmulatedModbusPump, pdu: bytes, now: float) -> bytes:
    if len(pdu) < 6:
        return exception_pdu(WRITE_MULTIPLE, ExceptionCode.ILLEGAL_VALUE)
    address = int.from_bytes(pdu[1:3], "big")
    count = int.from_bytes(pdu[3:5], "big")
    byte_count = pdu[5]
    if not 1 <= count <= MAX_WRITE or byte_count != 2 * count or len(pdu) != 6 + byte_count:
        return exception_pdu(WRITE_MULTIPLE, ExceptionCode.ILLEGAL_VALUE)
    values = [int.from_bytes(pdu[i : i + 2], "big") for i in range(6, 6 + byte_count, 2)]
    refused = pump.write_holding(address, values, now)
    if refused is not None:
        return exception_pdu(WRITE_MULTIPLE, refused)
    return bytes(pdu[:5])  # function code, start address, quantity (MAP §6.12)


_UNKNOWN_LENGTH: Final = -1


class ModbusRtuDevice:
    """``pump`` answering as unit ``unit_id`` (1…247) on a Modbus RTU line at ``baudrate``.

    Counters for tests and fault reports: ``requests`` answered, ``broadcasts`` executed,
    ``ignored`` (frames for other units, reads sent to the broadcast address), ``crc_errors``,
    ``discarded`` (partial frames ended by a silence or by overflowing the 256-byte ADU),
    ``skipped_bytes`` (dropped while waiting for a silence after a bad frame), ``device_failures``.
    Raises ValueError for a unit id outside 1…247 or a baud rate that is not positive.
    """

    def __init__(self, pump: EmulatedModbusPump, unit_id: int, *, baudrate: int = 19200) -> None:
        if unit_id not in RTU_UNIT_IDS:
            raise ValueError(f"an RTU unit id is 1…247 (MSL §2.2), got {unit_id}")
        self.pump = pump
        self.unit_id = unit_id
        self.baudrate = baudrate
        self.t35_s = t35_seconds(baudrate)
        self._buffer = bytearray()
        self._last_byte_at = float("-inf")
        self._skipping = False  # after a bad frame: drop bytes until the next silence
        self.requests = 0
        self.broadcasts = 0
        self.ignored = 0
        self.crc_errors = 0
        self.discarded = 0
        self.skipped_bytes = 0
        self.device_failures = 0

    def receive(self, data: bytes, now: float) -> bytes:
        """Take ``data`` arriving at monotonic time ``now``; return the reply frames (often b"")."""
        if now - self._last_byte_at > self.t35_s:  # a silence: whatever came before has ended
            if self._buffer:
                self.discarded += 1
                self._buffer.clear()
            self._skipping = False
        if data:
            self._last_byte_at = now
        if self._skipping:
            self.skipped_bytes += len(data)
            return b""
        self._buffer += data
        replies = bytearray()
        while self._buffer and not self._skipping:
            length = self._frame_length()
            if length is None:
                break  # not enough bytes yet to know the length
            if length == _UNKNOWN_LENGTH:
                replies += self._unknown_function()
                break
            if length > MAX_RTU_ADU:  # an FC16 byte count no valid frame can have
                self.discarded += 1
                self._give_up()
                break
            if len(self._buffer) < length:
                break
            frame = bytes(self._buffer[:length])
            del self._buffer[:length]
            if crc16_modbus(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
                self.crc_errors += 1
                self._give_up()
                break
            replies += self._answer(frame, now)
        return bytes(replies)

    # --- framing --------------------------------------------------------------------------------
    def _frame_length(self) -> int | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        function = buffer[1]
        if function in (READ_HOLDING, READ_INPUT, WRITE_SINGLE):
            return 8  # unit, function, address (2), quantity or value (2), CRC (2)
        if function == WRITE_MULTIPLE:
            # unit, function, address (2), quantity (2), byte count, values, CRC (2)
            return None if len(buffer) < 7 else 9 + buffer[6]
        return _UNKNOWN_LENGTH

    def _unknown_function(self) -> bytes:
        buffer = self._buffer
        if len(buffer) >= 4 and crc16_modbus(bytes(buffer[:-2])) == int.from_bytes(buffer[-2:], "little"):
            frame = bytes(buffer)
            self._buffer.clear()
            self._skipping = True  # any more of this frame is not a new one
            unit = frame[0]
            if unit != self.unit_id:
                self.ignored += 1
                return b""
            self.requests += 1
            return with_crc(bytes([unit]) + exception_pdu(frame[1], ExceptionCode.ILLEGAL_FUNCTION))
        if len(buffer) >= MAX_RTU_ADU:
            self.discarded += 1
            self._give_up()
        return b""

    def _give_up(self) -> None:
        """Drop the broken frame and ignore bytes until the next silence."""
        self._buffer.clear()
        self._skipping = True

    def _answer(self, frame: bytes, now: float) -> bytes:
        unit, pdu = frame[0], frame[1:-2]
        if unit == BROADCAST:
            if pdu[0] in (WRITE_SINGLE, WRITE_MULTIPLE):
                self.broadcasts += 1
                respond(self.pump, pdu, now, self)  # executed, never answered (MSL §2.1)
            else:
                self.ignored += 1
            return b""
        if unit != self.unit_id:
            self.ignored += 1
            return b""
        self.requests += 1
        return with_crc(bytes([unit]) + respond(self.pump, pdu, now, self))


class RtuMultidrop:
    """Several RTU devices on one line (RS-485 multidrop): every device hears every byte, and
    the one addressed answers. Serve it with one :class:`~pumpgw.rig.pty_link.PtyDeviceServer`."""

    def __init__(self, *devices: ModbusRtuDevice) -> None:
        units = [d.unit_id for d in devices]
        if len(set(units)) != len(units):
            raise ValueError(f"two devices on one line share a unit id: {sorted(units)}")
        self.devices = devices

    def receive(self, data: bytes, now: float) -> bytes:
        return b"".join(device.receive(data, now) for device in self.devices)


class ModbusTcpDevice:
    """``pump`` behind one Modbus TCP connection, answering unit ``unit_id`` (and 0 and 0xFF).

    Counters: ``requests`` answered, ``dropped`` (protocol id not 0), ``framing_errors`` (length
    field outside 2…254: the buffer is dropped), ``device_failures``. Raises ValueError for a
    unit id outside 0…255.
    """

    def __init__(self, pump: EmulatedModbusPump, unit_id: int) -> None:
        if not 0 <= unit_id <= 0xFF:
            raise ValueError(f"a unit id is one byte, got {unit_id}")
        self.pump = pump
        self.unit_id = unit_id
        self._buffer = bytearray()
        self.requests = 0
        self.dropped = 0
        self.framing_errors = 0
        self.device_failures = 0

    def receive(self, data: bytes, now: float) -> bytes:
        """Take ``data`` (any slice of the TCP stream); return the complete responses it allows."""
        self._buffer += data
        replies = bytearray()
        while len(self._buffer) >= 6:
            length = int.from_bytes(self._buffer[4:6], "big")
            if not 2 <= length <= MAX_MBAP_LENGTH:
                self.framing_errors += 1
                self._buffer.clear()
                break
            if len(self._buffer) < 6 + length:
                break
            adu = bytes(self._buffer[: 6 + length])
            del self._buffer[: 6 + length]
            if adu[2:4] != b"\0\0":
                self.dropped += 1
                continue
            unit, pdu = adu[6], adu[7:]
            self.requests += 1
            if unit in (self.unit_id, 0, 0xFF):
                response = respond(self.pump, pdu, now, self)
            else:
                response = exception_pdu(pdu[0], GATEWAY_TARGET_FAILED)
            replies += adu[0:2] + b"\0\0" + (len(response) + 1).to_bytes(2, "big") + bytes([unit])
            replies += response
        return bytes(replies)
