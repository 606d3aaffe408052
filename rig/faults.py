"""What happens on the wire between the gateway and an emulated pump: faults, line speed, recording.

A :class:`LinkConditioner` sits between a link (a PTY or a TCP connection) and the sans-I/O device
behind it. The link hands it every chunk that arrived; it answers with what the link must do:
:class:`Send` some bytes after a delay, or :class:`Hangup` for a while. It is sans-I/O too: no
sockets and no event loop, so every fault is tested byte for byte without a wire.

Faults (``pumpgw rig fault PUMP KIND``, :class:`FaultKind`), each applied to the device's replies
on this link, for a number of replies, for a time, or until cleared:

=================== ==================================================================================
``no-answer``        the device acts on the request but its reply never leaves
``delay``            each reply leaves ``delay_s`` late
``corrupt-checksum`` one bit of the reply's checksum is flipped (serial links only: TCP has none here)
``garbage``          line noise precedes each reply
``truncate``         only the first half of each reply leaves
``disconnect``       the link goes dead: TCP connections are dropped and refused, a serial line
                     neither hears nor speaks; afterwards it works again (the reconnect)
``frozen``           the device's time stands still: it answers, but its values stop moving
=================== ==================================================================================

Pump-level faults (an old drug library, device alarms) are not wire faults: the rig applies those
to the pump itself (:mod:`pumpgw.rig.bench_rig`).

Times. A fault's duration and the device's clock use the injected clock (so a test with a
``FakeClock`` decides when a fault ends); the *delays* of :class:`Send` are real seconds for the
link's event loop, because they model the wire, not the pump.

Line speed. With ``baudrate`` set, the conditioner paces a serial line as the real one would be:
a request of *n* characters takes ``n x bits_per_char / baudrate`` seconds to arrive (the device
answers only once its last character is in) and the reply as long again to leave, one direction
at a time per direction (RS-232 is full duplex). A PTY has no speed of its own; this makes the
bench's polls-per-second figures honest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

#: Noise a ``garbage`` fault puts before a reply: no frame start of any protocol the rig speaks
#: (New Era STX 0x02, Alaris ``!``), so it is noise a decoder must skip, not a frame to parse.
GARBAGE: Final = b"\x00\xff\x13\x7f\xa5"


class ByteDevice(Protocol):
    """A sans-I/O device: bytes in at a monotonic time, reply bytes out."""

    def receive(self, data: bytes, now: float) -> bytes: ...


class FaultKind(StrEnum):
    NO_ANSWER = "no-answer"
    DELAY = "delay"
    CORRUPT_CHECKSUM = "corrupt-checksum"
    GARBAGE = "garbage"
    TRUNCATE = "truncate"
    DISCONNECT = "disconnect"
    FROZEN = "frozen"


#: What each kind does, in words, for ``pumpgw rig fault --help`` and the control socket.
FAULT_MEANINGS: Final[dict[FaultKind, str]] = {
    FaultKind.NO_ANSWER: "the pump acts on requests but its replies never leave",
    FaultKind.DELAY: "each reply leaves late (--delay seconds)",
    FaultKind.CORRUPT_CHECKSUM: "one bit of each reply's checksum is flipped (serial links only)",
    FaultKind.GARBAGE: "line noise precedes each reply",
    FaultKind.TRUNCATE: "only the first half of each reply leaves",
    FaultKind.DISCONNECT: "the link goes dead for the fault's time, then works again",
    FaultKind.FROZEN: "the pump answers but its values stop moving",
}


class FaultError(ValueError):
    """A fault that cannot be applied as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault on one link. ``count``: replies it affects; ``duration_s``: how long, in the
    link clock's seconds, from when it is set. Neither: until cleared. Both: whichever ends first.
    """

    kind: FaultKind
    count: int | None = None
    duration_s: float | None = None
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.count is not None and self.count < 1:
            raise FaultError(f"fault {self.kind}: count {self.count} must be at least 1")
        if self.duration_s is not None and not self.duration_s > 0:
            raise FaultError(f"fault {self.kind}: duration {self.duration_s} s must be positive")
        if self.kind is FaultKind.DELAY and not self.delay_s > 0:
            raise FaultError("fault delay: needs a positive delay in seconds")
        if self.kind is FaultKind.DISCONNECT and self.duration_s is None:
            raise FaultError("fault disconnect: needs a duration (how long the link stays dead)")


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data`` ``delay_s`` real seconds from now (after anything scheduled earlier)."""

    data: bytes
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Hangup:
    """Drop the link's connections now; refuse new ones while :meth:`LinkConditioner.dead` says so."""


Action = Send | Hangup


class Tap(Protocol):
    """Something that wants to see every byte on the link (a recorder)."""

    def host_sent(self, data: bytes, at: float, conn: int | None) -> None: ...

    def device_sent(self, data: bytes, at: float, conn: int | None) -> None: ...


@dataclass
class _Active:
    fault: Fault
    since: float
    left: int | None


class FaultSet:
    """The faults in force on one pump's link, shared by all its connections (TCP has several)."""

    def __init__(self, *, checksummed: bool) -> None:
        self.checksummed = checksummed
        self._faults: dict[FaultKind, _Active] = {}
        self.replies_affected = 0

    def set(self, fault: Fault, now: float) -> None:
        """Apply ``fault`` from ``now`` (link clock), replacing one of the same kind.
        Raises FaultError for a fault this link cannot have."""
        if fault.kind is FaultKind.CORRUPT_CHECKSUM and not self.checksummed:
            raise FaultError("corrupt-checksum: this link's frames carry no checksum (Modbus TCP)")
        self._faults[fault.kind] = _Active(fault, now, fault.count)

    def clear(self, kind: FaultKind | None = None) -> None:
        """End one fault, or all of them."""
        if kind is None:
            self._faults.clear()
        else:
            self._faults.pop(kind, None)

    def active(self, now: float) -> list[Fault]:
        """The faults in force at ``now``."""
        self._expire(now)
        return [a.fault for a in self._faults.values()]

    def dead(self, now: float) -> bool:
        """Whether a ``disconnect`` fault holds the link down at ``now``."""
        self._expire(now)
        return FaultKind.DISCONNECT in self._faults

    def get(self, kind: FaultKind) -> _Active | None:
        return self._faults.get(kind)

    def use(self, active: _Active) -> None:
        """One reply was affected by ``active``: count it down."""
        self.replies_affected += 1
        if active.left is not None:
            active.left -= 1
            if active.left <= 0:
                self._faults.pop(active.fault.kind, None)

    def _expire(self, now: float) -> None:
        for kind, active in list(self._faults.items()):
            duration = active.fault.duration_s
            if duration is not None and now - active.since >= duration:
                del self._faults[kind]


class LinkConditioner:
    """Faults, pacing and recording for one link (one TCP connection) to ``device``. See the
    module docstring.

    ``faults``: the pump's :class:`FaultSet` (shared between a TCP server's connections); a new
    one if not given. ``checksum_at``: where the checksum's last byte sits, counted from the
    reply's end (New Era: CRC low byte then ETX → 2; Modbus RTU: CRC high byte last → 1; Alaris:
    4 hex digits then CR → 2); 0: no checksum. ``baudrate``/``bits_per_char``: pace the line
    (None: as fast as the PTY goes). ``conn``: the connection number taps are told.
    ``wire_clock``: real seconds for pacing (injectable for tests).
    """

    def __init__(
        self,
        device: ByteDevice,
        *,
        faults: FaultSet | None = None,
        checksum_at: int = 2,
        baudrate: int | None = None,
        bits_per_char: int = 10,
        taps: list[Tap] | None = None,
        conn: int | None = None,
        wire_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if baudrate is not None and baudrate <= 0:
            raise FaultError(f"baud rate {baudrate} must be positive")
        self.device = device
        self.faults = faults if faults is not None else FaultSet(checksummed=checksum_at > 0)
        self.checksum_at = checksum_at
        self.baudrate = baudrate
        self.bits_per_char = bits_per_char
        self.taps: list[Tap] = taps if taps is not None else []
        self.conn = conn
        self._wire_clock = wire_clock
        self._rx_free_at = 0.0  # wire time the host-to-device direction is free again
        self._tx_free_at = 0.0  # same, device to host

    # -- bytes ------------------------------------------------------------------------------------
    def incoming(self, data: bytes, now: float) -> list[Action]:
        """Bytes from the host at link-clock time ``now``: what the link must do."""
        faults = self.faults
        if faults.dead(now):
            return [Hangup()]  # a dead line hears nothing; a TCP peer is dropped again
        wire_now = self._wire_clock()
        for tap in self.taps:
            tap.host_sent(data, wire_now, self.conn)
        frozen = faults.get(FaultKind.FROZEN)
        reply = self.device.receive(data, frozen.since if frozen is not None else now)
        if frozen is not None:
            faults.use(frozen)
        arrived = self._arrival(len(data), wire_now)
        if not reply:
            return []
        spoiled = self._spoil(reply)
        if spoiled is None:
            return []
        delay = arrived - wire_now
        extra = faults.get(FaultKind.DELAY)
        if extra is not None:
            delay += extra.fault.delay_s
            faults.use(extra)
        delay = self._departure(len(spoiled), wire_now + delay) - wire_now
        for tap in self.taps:
            tap.device_sent(spoiled, wire_now + delay, self.conn)
        return [Send(spoiled, delay)]

    # -- internals --------------------------------------------------------------------------------
    def _spoil(self, reply: bytes) -> bytes | None:
        faults = self.faults
        silent = faults.get(FaultKind.NO_ANSWER)
        if silent is not None:
            faults.use(silent)
            return None
        out = reply
        corrupt = faults.get(FaultKind.CORRUPT_CHECKSUM)
        if corrupt is not None and 0 < self.checksum_at <= len(out):
            at = len(out) - self.checksum_at
            out = out[:at] + bytes([out[at] ^ 0x01]) + out[at + 1 :]
            faults.use(corrupt)
        truncate = faults.get(FaultKind.TRUNCATE)
        if truncate is not None:
            out = out[: len(out) // 2]
            faults.use(truncate)
        garbage = faults.get(FaultKind.GARBAGE)
        if garbage is not None:
            out = GARBAGE + out
            faults.use(garbage)
        return out or None

    def _chars_time(self, chars: int) -> float:
        if self.baudrate is None:
            return 0.0
        return chars * self.bits_per_char / self.baudrate

    def _arrival(self, chars: int, wire_now: float) -> float:
        """When the last of ``chars`` host characters reaches the device."""
        start = max(wire_now, self._rx_free_at)
        self._rx_free_at = start + self._chars_time(chars)
        return self._rx_free_at

    def _departure(self, chars: int, ready: float) -> float:
        """When the last of ``chars`` reply characters reaches the host, sent from ``ready`` on."""
        start = max(ready, self._tx_free_at)
        self._tx_free_at = start + self._chars_time(chars)
        return self._tx_free_at
