"""The link conditioner: each wire fault byte for byte, fault lifetimes, and line pacing (sans-I/O)."""

from __future__ import annotations

import pytest

from pumpgw.rig.faults import GARBAGE, Fault, FaultError, FaultKind, FaultSet, Hangup, LinkConditioner, Send


class Echo:
    """Answers ``<data>`` and remembers the time it was given."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def receive(self, data: bytes, now: float) -> bytes:
        self.times.append(now)
        return b"<" + data + b">"


class WireClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _link(**kwargs: object) -> tuple[LinkConditioner, Echo, WireClock]:
    device = Echo()
    wire = WireClock()
    return LinkConditioner(device, wire_clock=wire, **kwargs), device, wire  # type: ignore[arg-type]


def test_no_fault_passes_the_reply_at_once() -> None:
    link, _, _ = _link()
    assert link.incoming(b"abc", 1.0) == [Send(b"<abc>", 0.0)]


def test_no_answer_drops_the_reply_but_the_device_still_acts() -> None:
    link, device, _ = _link()
    link.faults.set(Fault(FaultKind.NO_ANSWER, count=2), 0.0)
    assert link.incoming(b"a", 1.0) == []
    assert link.incoming(b"b", 2.0) == []
    assert device.times == [1.0, 2.0]  # the pump acted on both requests
    assert link.incoming(b"c", 3.0) == [Send(b"<c>", 0.0)]  # the count ran out
    assert link.faults.replies_affected == 2


def test_corrupt_checksum_flips_one_bit_at_the_checksum_position() -> None:
    link, _, _ = _link(checksum_at=2)
    link.faults.set(Fault(FaultKind.CORRUPT_CHECKSUM, count=1), 0.0)
    (send,) = link.incoming(b"xyz", 0.0)
    assert isinstance(send, Send)
    good = b"<xyz>"
    assert len(send.data) == len(good)
    diff = [i for i in range(len(good)) if send.data[i] != good[i]]
    assert diff == [len(good) - 2]
    assert send.data[-2] ^ good[-2] == 0x01


def test_corrupt_checksum_is_refused_on_a_link_without_checksums() -> None:
    faults = FaultSet(checksummed=False)
    with pytest.raises(FaultError, match="no checksum"):
        faults.set(Fault(FaultKind.CORRUPT_CHECKSUM), 0.0)


def test_garbage_comes_before_the_reply_and_truncate_halves_it() -> None:
    link, _, _ = _link()
    link.faults.set(Fault(FaultKind.GARBAGE, count=1), 0.0)
    assert link.incoming(b"ab", 0.0) == [Send(GARBAGE + b"<ab>", 0.0)]
    link.faults.set(Fault(FaultKind.TRUNCATE, count=1), 0.0)
    assert link.incoming(b"abcd", 0.0) == [Send(b"<ab", 0.0)]
    assert b"\x02" not in GARBAGE
    assert b"!" not in GARBAGE


def test_delay_adds_real_seconds_and_later_replies_keep_their_order() -> None:
    link, _, _ = _link()
    link.faults.set(Fault(FaultKind.DELAY, count=1, delay_s=0.5), 0.0)
    assert link.incoming(b"a", 0.0) == [Send(b"<a>", 0.5)]
    # The next reply has no delay of its own but cannot overtake the delayed one.
    (send,) = link.incoming(b"b", 0.0)
    assert isinstance(send, Send)
    assert send.delay_s == pytest.approx(0.5)


def test_disconnect_holds_the_line_dead_for_its_time_then_it_works_again() -> None:
    link, device, _ = _link()
    link.faults.set(Fault(FaultKind.DISCONNECT, duration_s=10), 0.0)
    assert link.incoming(b"a", 5.0) == [Hangup()]
    assert device.times == []  # a dead line carries nothing to the pump
    assert link.faults.dead(9.9)
    assert not link.faults.dead(10.0)
    assert link.incoming(b"b", 10.0) == [Send(b"<b>", 0.0)]


def test_disconnect_needs_a_duration_and_delay_needs_a_delay() -> None:
    with pytest.raises(FaultError, match="duration"):
        Fault(FaultKind.DISCONNECT)
    with pytest.raises(FaultError, match="delay"):
        Fault(FaultKind.DELAY)
    with pytest.raises(FaultError, match="count"):
        Fault(FaultKind.GARBAGE, count=0)


def test_frozen_gives_the_device_the_time_the_fault_began() -> None:
    link, device, _ = _link()
    link.faults.set(Fault(FaultKind.FROZEN, duration_s=60), 10.0)
    link.incoming(b"a", 20.0)
    link.incoming(b"b", 50.0)
    link.incoming(b"c", 70.0)  # the fault is over: time moves again
    assert device.times == [10.0, 10.0, 70.0]


def test_clear_ends_every_fault() -> None:
    link, _, _ = _link()
    link.faults.set(Fault(FaultKind.NO_ANSWER), 0.0)
    link.faults.set(Fault(FaultKind.GARBAGE), 0.0)
    assert {f.kind for f in link.faults.active(0.0)} == {FaultKind.NO_ANSWER, FaultKind.GARBAGE}
    link.faults.clear()
    assert link.faults.active(0.0) == []
    assert link.incoming(b"a", 0.0) == [Send(b"<a>", 0.0)]


def test_pacing_at_19200_baud_takes_the_line_time_of_request_and_reply() -> None:
    link, _, wire = _link(baudrate=19200)
    (send,) = link.incoming(b"12345678", 0.0)  # 8 characters in, 10 out (<12345678>)
    assert isinstance(send, Send)
    assert send.delay_s == pytest.approx((8 + 10) * 10 / 19200)
    # A second request sent at once waits for the first to be off the line in each direction.
    (second,) = link.incoming(b"12345678", 0.0)
    assert isinstance(second, Send)
    assert second.delay_s == pytest.approx((8 + 10) * 10 / 19200 + 10 * 10 / 19200)
    wire.now += 1.0  # an idle second later the line is free again
    (third,) = link.incoming(b"12345678", 0.0)
    assert isinstance(third, Send)
    assert third.delay_s == pytest.approx((8 + 10) * 10 / 19200)


class Tape:
    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes, int | None]] = []

    def host_sent(self, data: bytes, at: float, conn: int | None) -> None:
        self.seen.append(("host", data, conn))

    def device_sent(self, data: bytes, at: float, conn: int | None) -> None:
        self.seen.append(("pump", data, conn))


def test_taps_see_what_the_wire_carried_after_the_faults() -> None:
    tape = Tape()
    link, _, _ = _link(taps=[tape], conn=3)
    link.faults.set(Fault(FaultKind.TRUNCATE, count=1), 0.0)
    link.incoming(b"abcd", 0.0)
    assert tape.seen == [("host", b"abcd", 3), ("pump", b"<ab", 3)]
