"""How scans reach the gateway: the keyboard-wedge decoder, the serial framer, and both scanner
parts against the rig's scanners over real PTYs and real FIFOs (no mocks, no sleeps in the tests).

Key codes are checked against ``include/uapi/linux/input-event-codes.h`` (torvalds/linux) and the
``struct input_event`` layout against ``include/uapi/linux/input.h``; the scan vectors W1, S1, M1,
A1, E1 and N1 are from ``shared/reference/barcodes.md`` §5.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pumpgw.gateway import keymap
from pumpgw.gateway.backoff import Backoff
from pumpgw.gateway.keymap import (
    NATIVE_LAYOUT,
    DecodeError,
    DecodeProblem,
    EventLayout,
    KeyboardDecoder,
)
from pumpgw.gateway.scanners import (
    EVIOCGRAB,
    KeyboardWedgeScanner,
    LineFramer,
    SerialScanner,
)
from pumpgw.gateway.supervisor import Supervisor
from pumpgw.rig.scanner import (
    EmulatedKeyboardScanner,
    EmulatedScanner,
    encode_keystrokes,
    input_event,
    keystroke,
    wire_text,
)

# Vectors from shared/reference/barcodes.md §5 (\x1d = GS).
W1 = "]d28018123456789012345675\x1d8019123"
S1 = "]d28017795260646688514634"
M1 = "]d201095212345432131727123110ABC123\x1d21SN0001"
A1 = "]C180049520614141234567"
E1 = "]E09521234543213"
N1 = "010952123454321317271231" + "10ABC12321SN0001"  # M1's element string with the GS dropped

#: The key codes of include/uapi/linux/input-event-codes.h (torvalds/linux), copied by hand.
KERNEL_CODES = {
    "EV_SYN": 0x00,
    "EV_KEY": 0x01,
    "EV_MSC": 0x04,
    "SYN_DROPPED": 3,
    "KEY_1": 2,
    "KEY_0": 11,
    "KEY_MINUS": 12,
    "KEY_EQUAL": 13,
    "KEY_TAB": 15,
    "KEY_Q": 16,
    "KEY_P": 25,
    "KEY_LEFTBRACE": 26,
    "KEY_RIGHTBRACE": 27,
    "KEY_ENTER": 28,
    "KEY_LEFTCTRL": 29,
    "KEY_A": 30,
    "KEY_L": 38,
    "KEY_SEMICOLON": 39,
    "KEY_APOSTROPHE": 40,
    "KEY_GRAVE": 41,
    "KEY_LEFTSHIFT": 42,
    "KEY_BACKSLASH": 43,
    "KEY_Z": 44,
    "KEY_M": 50,
    "KEY_COMMA": 51,
    "KEY_DOT": 52,
    "KEY_SLASH": 53,
    "KEY_RIGHTSHIFT": 54,
    "KEY_LEFTALT": 56,
    "KEY_SPACE": 57,
    "KEY_CAPSLOCK": 58,
    "KEY_KP7": 71,
    "KEY_KP0": 82,
    "KEY_KPDOT": 83,
    "KEY_KPENTER": 96,
    "KEY_RIGHTCTRL": 97,
}

FAST = Backoff(base_s=0.005, cap_s=0.02)
SHORT_PARTIAL_S = 0.05

ASCII = st.text(alphabet=st.characters(min_codepoint=0x00, max_codepoint=0x7E), min_size=1, max_size=60)


def ev(code: int, value: int, type_: int = 1, layout: EventLayout = NATIVE_LAYOUT) -> bytes:
    return input_event(type_, code, value, layout=layout)


def tap(code: int) -> bytes:
    return ev(code, 1) + ev(0, 0, type_=0) + ev(code, 0) + ev(0, 0, type_=0)


# --- key codes and the event layout ---------------------------------------------------------------
def test_key_codes_are_the_kernels() -> None:
    """Every number both sides use, against the header (torvalds/linux input-event-codes.h)."""
    for name, value in KERNEL_CODES.items():
        assert getattr(keymap, name) == value, name
    # The rig's encoder has its own table (rows of consecutive codes); it must agree too.
    assert keystroke("1") == (KERNEL_CODES["KEY_1"], False, False)
    assert keystroke("!") == (KERNEL_CODES["KEY_1"], True, False)
    assert keystroke("a") == (KERNEL_CODES["KEY_A"], False, False)
    assert keystroke("Q") == (KERNEL_CODES["KEY_Q"], True, False)
    assert keystroke("p") == (KERNEL_CODES["KEY_P"], False, False)
    assert keystroke("z") == (KERNEL_CODES["KEY_Z"], False, False)
    assert keystroke("m") == (KERNEL_CODES["KEY_M"], False, False)
    assert keystroke("]") == (KERNEL_CODES["KEY_RIGHTBRACE"], False, False)
    assert keystroke("\x1d") == (KERNEL_CODES["KEY_RIGHTBRACE"], False, True)  # GS = Ctrl+]
    assert keystroke("~") == (KERNEL_CODES["KEY_GRAVE"], True, False)
    assert keystroke("|") == (KERNEL_CODES["KEY_BACKSLASH"], True, False)
    assert keystroke("?") == (KERNEL_CODES["KEY_SLASH"], True, False)
    assert keystroke(" ") == (KERNEL_CODES["KEY_SPACE"], False, False)
    assert keystroke('"') == (KERNEL_CODES["KEY_APOSTROPHE"], True, False)
    with pytest.raises(ValueError, match="U\\+00E9"):
        keystroke("é")
    with pytest.raises(ValueError, match="U\\+007F"):
        keystroke("\x7f")


def test_event_layouts() -> None:
    """struct input_event (linux/input.h): struct timeval (two C longs) + u16 type + u16 code + s32
    value; 24 bytes on LP64, 16 with 4-byte longs; the native one is what this process reads."""
    assert EventLayout.BITS64.size == 24
    assert EventLayout.BITS32.size == 16
    assert NATIVE_LAYOUT.size == struct.calcsize("@llHHi")
    # Built field by field, independently of the struct format strings.
    order = sys.byteorder
    golden = (
        (5).to_bytes(8, order)
        + (250_000).to_bytes(8, order)
        + (1).to_bytes(2, order)
        + (27).to_bytes(2, order)
        + (1).to_bytes(4, order, signed=True)
    )
    assert input_event(1, 27, 1, layout=EventLayout.BITS64, time_s=5.25) == golden
    golden32 = (5).to_bytes(4, order) + (250_000).to_bytes(4, order) + golden[16:]
    assert input_event(1, 27, 1, layout=EventLayout.BITS32, time_s=5.25) == golden32
    release = (-1).to_bytes(4, order, signed=True)  # value is signed
    assert EventLayout.BITS64.pack(0, 0, 1, 2, -1)[-4:] == release


@pytest.mark.parametrize("layout", list(EventLayout))
def test_decodes_hand_built_events_in_either_layout(layout: EventLayout) -> None:
    """Shift+a, Ctrl+], 1, Enter, written event by event (W1-style GS via Ctrl+])."""
    shift, ctrl = KERNEL_CODES["KEY_LEFTSHIFT"], KERNEL_CODES["KEY_LEFTCTRL"]

    def e(code: int, value: int) -> bytes:
        return ev(code, value, layout=layout) + ev(0, 0, type_=0, layout=layout)

    data = (
        e(shift, 1)
        + e(30, 1)
        + e(30, 0)
        + e(shift, 0)
        + e(ctrl, 1)
        + e(27, 1)
        + e(27, 0)
        + e(ctrl, 0)
        + e(2, 1)
        + e(2, 0)
        + e(28, 1)
        + e(28, 0)
    )
    assert KeyboardDecoder(layout=layout).feed(data) == ["A\x1d1"]


def test_gs_shifted_characters_and_vectors_round_trip() -> None:
    decoder = KeyboardDecoder()
    for vector in (W1, S1, M1, A1, E1, 'Lot "A"{1}: ~50%? <ok> |x| `q` \\'):
        assert decoder.feed(encode_keystrokes(vector)) == [vector]
    assert not decoder.pending


def test_right_modifiers_and_every_control_character() -> None:
    text = "".join(chr(c) for c in range(0x20)) + "AZ{}"
    data = encode_keystrokes(
        text, shift_key=KERNEL_CODES["KEY_RIGHTSHIFT"], ctrl_key=KERNEL_CODES["KEY_RIGHTCTRL"]
    )
    assert KeyboardDecoder().feed(data) == [text]


def test_repeat_misc_and_syn_events_are_ignored() -> None:
    a = KERNEL_CODES["KEY_A"]
    data = (
        ev(4, 0x70004, type_=4)  # EV_MSC / MSC_SCAN
        + ev(a, 1)
        + ev(0, 0, type_=0)
        + ev(a, 2)  # autorepeat: would double the 'a'
        + ev(0, 0, type_=0)
        + ev(a, 2)
        + ev(a, 0)
        + ev(0x11, 1, type_=0x11)  # EV_LED: not text
        + tap(KERNEL_CODES["KEY_ENTER"])
    )
    assert KeyboardDecoder().feed(data) == ["a"]


def test_terminators_are_configurable() -> None:
    """Tab ends a scan by default; configured away, it is data (HT), and so is Enter if not listed."""
    tab, enter = KERNEL_CODES["KEY_TAB"], KERNEL_CODES["KEY_ENTER"]
    scan = encode_keystrokes("ab", terminator_key=None)
    assert KeyboardDecoder().feed(scan + tap(tab)) == ["ab"]
    assert KeyboardDecoder().feed(scan + tap(KERNEL_CODES["KEY_KPENTER"])) == ["ab"]
    only_enter = KeyboardDecoder(terminators={enter})
    assert only_enter.feed(scan + tap(tab) + scan + tap(enter)) == ["ab\tab"]
    only_tab = KeyboardDecoder(terminators={tab})
    assert only_tab.feed(scan + tap(enter) + tap(tab)) == ["ab\r"]
    with pytest.raises(ValueError, match="terminator"):
        KeyboardDecoder(terminators=())


def test_keypad_digits_without_modifiers() -> None:
    kp7, kp0, kpdot = KERNEL_CODES["KEY_KP7"], KERNEL_CODES["KEY_KP0"], KERNEL_CODES["KEY_KPDOT"]
    decoder = KeyboardDecoder()
    assert decoder.feed(tap(kp7) + tap(kp0) + tap(kpdot) + tap(28)) == ["70."]
    shifted = ev(42, 1) + tap(kp7) + ev(42, 0) + tap(28)
    (error,) = decoder.feed(shifted)
    assert isinstance(error, DecodeError)
    assert error.key_codes == (kp7,)
    assert "with Shift" in str(error)


def test_unknown_key_damages_the_whole_scan() -> None:
    """An Alt press in the middle: the scan is reported naming the key, never delivered in parts."""
    alt = KERNEL_CODES["KEY_LEFTALT"]
    data = encode_keystrokes("0109", terminator_key=None) + tap(alt) + encode_keystrokes("5212")
    decoder = KeyboardDecoder()
    (error,) = decoder.feed(data)
    assert isinstance(error, DecodeError)
    assert error.problem is DecodeProblem.UNKNOWN_KEY
    assert error.key_codes == (alt,)
    assert error.text == "01095212"
    assert "key code 56 (KEY_LEFTALT)" in str(error)
    assert not decoder.pending
    assert decoder.feed(encode_keystrokes(E1)) == [E1]  # the next scan is fine
    (ctrl1,) = decoder.feed(ev(29, 1) + tap(2) + ev(29, 0) + tap(28))  # Ctrl+1 types nothing
    assert isinstance(ctrl1, DecodeError)
    assert "key code 2 (KEY_1 with Ctrl)" in str(ctrl1)
    (capslock,) = decoder.feed(tap(KERNEL_CODES["KEY_CAPSLOCK"]) + tap(28))  # unknown alone is reported
    assert isinstance(capslock, DecodeError)
    assert capslock.key_codes == (58,)
    (odd,) = decoder.feed(ev(30, 7) + tap(28))  # an event value evdev never sends
    assert isinstance(odd, DecodeError)
    assert "event value 7" in str(odd)


def test_unnamed_key_code_is_named_by_number() -> None:
    (error,) = KeyboardDecoder().feed(tap(0x2FF) + tap(28))
    assert isinstance(error, DecodeError)
    assert "key code 767 (key 767)" in str(error)


def test_dropped_events_damage_the_scan_and_forget_modifiers() -> None:
    decoder = KeyboardDecoder()
    data = ev(42, 1) + tap(30) + ev(3, 0, type_=0) + tap(48) + tap(28)  # shift release lost
    (error,) = decoder.feed(data)
    assert isinstance(error, DecodeError)
    assert error.problem is DecodeProblem.EVENTS_LOST
    assert decoder.feed(tap(30) + tap(28)) == ["a"]  # Shift no longer held


def test_too_long_scan_is_reported_and_bounded() -> None:
    decoder = KeyboardDecoder(max_length=8)
    assert decoder.feed(encode_keystrokes("12345678")) == ["12345678"]
    (error,) = decoder.feed(encode_keystrokes("123456789" * 100))
    assert isinstance(error, DecodeError)
    assert error.problem is DecodeProblem.TOO_LONG
    assert "900 characters, more than the 8" in str(error)
    assert len(error.text) == 8
    assert decoder.feed(encode_keystrokes("ok")) == ["ok"]


def test_split_events_empty_scans_and_partials() -> None:
    decoder = KeyboardDecoder()
    data = encode_keystrokes(M1)
    out: list[str | DecodeError] = []
    for i in range(0, len(data), 7):  # 7 bytes at a time: events cut anywhere
        out += decoder.feed(data[i : i + 7])
    assert out == [M1]
    assert decoder.feed(tap(28) + tap(28)) == []  # Enter alone is no scan
    assert decoder.drop_partial() is None
    assert decoder.feed(encode_keystrokes("0109", terminator_key=None)) == []
    assert _pending(decoder)
    partial = decoder.drop_partial()
    assert partial is not None
    assert partial.problem is DecodeProblem.PARTIAL
    assert partial.text == "0109"
    assert not _pending(decoder)
    decoder.feed(ev(42, 1) + ev(30, 1)[:5])
    decoder.reset()
    assert decoder.feed(tap(30) + tap(28)) == ["a"]  # reset forgot Shift and the half event


def _pending(decoder: KeyboardDecoder) -> bool:
    # A call, not the property: mypy would carry the narrowing of one assert to the next.
    return decoder.pending


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(ASCII, min_size=1, max_size=4),
    shift=st.sampled_from([KERNEL_CODES["KEY_LEFTSHIFT"], KERNEL_CODES["KEY_RIGHTSHIFT"]]),
    ctrl=st.sampled_from([KERNEL_CODES["KEY_LEFTCTRL"], KERNEL_CODES["KEY_RIGHTCTRL"]]),
    layout=st.sampled_from(list(EventLayout)),
    msc=st.booleans(),
    chunk=st.integers(min_value=1, max_value=200),
)
def test_encode_then_decode_is_identity(
    texts: list[str], shift: int, ctrl: int, layout: EventLayout, msc: bool, chunk: int
) -> None:
    """Over the whole supported alphabet (ASCII 0x00..0x7E), in any chunking, either layout."""
    data = b"".join(
        encode_keystrokes(t, layout=layout, shift_key=shift, ctrl_key=ctrl, msc_scan=msc) for t in texts
    )
    decoder = KeyboardDecoder(layout=layout)
    out: list[str | DecodeError] = []
    for i in range(0, len(data), chunk):
        out += decoder.feed(data[i : i + chunk])
    assert out == texts


EVENTS = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 1, 1, 4, 0x11]),  # mostly EV_KEY; EV_SYN (incl. SYN_DROPPED), EV_MSC, EV_LED
        st.integers(min_value=0, max_value=260),
        st.integers(min_value=-1, max_value=3),
    ),
    max_size=400,
)


@settings(max_examples=300, deadline=None)
@given(events=EVENTS, tail=st.binary(max_size=30))
def test_decoder_takes_any_events(events: list[tuple[int, int, int]], tail: bytes) -> None:
    """Whatever a device sends is scans or DecodeErrors, never an exception, never unbounded."""
    data = b"".join(ev(code, value, type_=type_) for type_, code, value in events) + tail
    decoder = KeyboardDecoder(max_length=16)
    for item in decoder.feed(data):
        assert isinstance(item, str | DecodeError)
        if isinstance(item, str):
            assert 0 < len(item) <= 16
        else:
            assert len(item.text) <= 16


# --- the serial framer -------------------------------------------------------------------------
def test_line_framer() -> None:
    framer = LineFramer(b"\r")
    assert framer.feed(W1.encode() + b"\r" + S1.encode()) == [W1]
    assert framer.pending
    assert framer.feed(b"\r\r") == [S1]  # the empty line is no scan
    crlf = LineFramer(b"\r\n")
    assert crlf.feed(b"AB\r") == []
    assert crlf.feed(b"\nCD\r\n") == ["AB", "CD"]
    (bad,) = framer.feed(b"ok\xff\r")
    assert isinstance(bad, DecodeError)
    assert bad.problem is DecodeProblem.NOT_TEXT
    assert "byte 0xFF at position 2 is not utf-8" in str(bad)
    assert LineFramer(encoding="latin-1").feed(b"\xe9\r") == ["é"]
    with pytest.raises(LookupError):
        LineFramer(encoding="no-such-codec")
    with pytest.raises(ValueError, match="terminator"):
        LineFramer(b"")


def test_line_framer_bounds_a_long_scan() -> None:
    framer = LineFramer(b"\r\n", max_length=10)
    out: list[str | DecodeError] = []
    for _ in range(100):
        out += framer.feed(b"0123456789" * 3)
        assert len(framer._buffer) <= 10  # memory stays bounded
    out += framer.feed(b"\r")  # the first half of the terminator...
    out += framer.feed(b"\nnext\r\n")  # ... and its second half
    assert len(out) == 2
    assert isinstance(out[0], DecodeError)
    assert out[0].problem is DecodeProblem.TOO_LONG
    assert "3000 bytes" in str(out[0])
    assert out[1] == "next"
    (long_in_one,) = LineFramer(max_length=4).feed(b"12345\r")
    assert isinstance(long_in_one, DecodeError)
    assert long_in_one.problem is DecodeProblem.TOO_LONG


@settings(max_examples=200, deadline=None)
@given(
    scans=st.lists(
        st.text(
            st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_characters="\r"),
            min_size=1,
            max_size=40,
        ),
        min_size=1,
        max_size=5,
    ),
    chunk=st.integers(min_value=1, max_value=50),
)
def test_line_framer_any_chunking(scans: list[str], chunk: int) -> None:
    data = b"".join(s.encode("utf-8", "surrogatepass") + b"\r" for s in scans)
    framer = LineFramer()
    out: list[str | DecodeError] = []
    for i in range(0, len(data), chunk):
        out += framer.feed(data[i : i + chunk])
    expected = [s if not any(0xD800 <= ord(c) <= 0xDFFF for c in s) else None for s in scans]
    assert len(out) == len(expected)
    for got, want in zip(out, expected, strict=True):
        if want is None:
            assert isinstance(got, DecodeError)  # a lone surrogate is not UTF-8
        else:
            assert got == want


# --- the rig ---------------------------------------------------------------------------------------
def test_wire_text_gs_failures() -> None:
    """N1 (barcodes.md §5): M1's element string with the GS dropped."""
    element_string = "010952123454321317271231" + "10ABC123\x1d21SN0001"
    assert wire_text(element_string, drop_gs=True) == N1
    assert wire_text(element_string, gs_substitute="|") == "01095212345432131727123110ABC123|21SN0001"
    assert wire_text(element_string) == element_string
    with pytest.raises(ValueError, match="not both"):
        wire_text(element_string, drop_gs=True, gs_substitute="|")


# --- the scanner parts -------------------------------------------------------------------------
@dataclass
class Inbox:
    """What the callbacks received, with events to wait on."""

    scans: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_scan(self, scanner_id: str, raw: str) -> None:
        self.scans.append((scanner_id, raw))
        self.changed.set()

    def on_error(self, scanner_id: str, message: str) -> None:
        self.errors.append((scanner_id, message))
        self.changed.set()

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(3):
            while not check():
                self.changed.clear()
                await self.changed.wait()

    async def scan_count(self, n: int) -> list[str]:
        await self.until(lambda: len(self.scans) >= n)
        return [raw for _, raw in self.scans]

    async def error_matching(self, text: str) -> str:
        await self.until(lambda: any(text in m for _, m in self.errors))
        return next(m for _, m in self.errors if text in m)


class Sleeps:
    """An injected sleep that counts the backoff waits and lets tests wait for a number of them."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.count += 1
        self.changed.set()
        await asyncio.sleep(min(seconds, 0.005))

    async def at_least(self, n: int) -> None:
        async with asyncio.timeout(3):
            while self.count < n:
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def running(part: SerialScanner | KeyboardWedgeScanner) -> AsyncIterator[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(part.run(ready))
    await ready.wait()
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task})
        assert task.cancelled()  # cancellation reached it and was not swallowed


def serial_scanner(port: str, inbox: Inbox, **kwargs: object) -> SerialScanner:
    return SerialScanner(
        port,
        9600,
        on_scan=inbox.on_scan,
        on_error=inbox.on_error,
        scanner_id="bed1",
        backoff=FAST,
        **kwargs,  # type: ignore[arg-type]
    )


def wedge_scanner(path: str, inbox: Inbox, **kwargs: object) -> KeyboardWedgeScanner:
    return KeyboardWedgeScanner(
        path,
        on_scan=inbox.on_scan,
        on_error=inbox.on_error,
        scanner_id="bed1",
        backoff=FAST,
        **kwargs,  # type: ignore[arg-type]
    )


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_serial_scans_arrive_exactly() -> None:
    """W1, M1 (GS kept), S1, A1, E1 over a real PTY; then a scanner that drops GS gives N1."""
    inbox = Inbox()
    async with EmulatedScanner() as emulator:
        scanner = serial_scanner(emulator.path, inbox)
        async with running(scanner):
            await scanner.wait_connected()
            for vector in (W1, M1, S1, A1, E1):
                await emulator.scan(vector)
            assert await inbox.scan_count(5) == [W1, M1, S1, A1, E1]
            assert all(scanner_id == "bed1" for scanner_id, _ in inbox.scans)
            emulator.drop_gs = True
            await emulator.scan("]d2010952123454321317271231" + "10ABC123\x1d21SN0001")
            emulator.drop_gs, emulator.gs_substitute = False, "|"
            await emulator.scan(M1)
            scans = await inbox.scan_count(7)
            assert scans[5] == "]d2" + N1
            assert scans[6] == M1.replace("\x1d", "|")
    assert inbox.errors == []
    assert scanner.scans == 7


async def test_serial_crlf_terminator_and_async_callbacks_in_order() -> None:
    """Coroutine callbacks run one at a time in arrival order; one that raises does not stop the
    scanner. The first callback blocks until every scan has been read from the port."""
    scans: list[str] = []
    first_started = asyncio.Event()
    gate = asyncio.Event()
    done = asyncio.Event()

    async def on_scan(scanner_id: str, raw: str) -> None:
        if raw == "first":
            first_started.set()
            await gate.wait()
        if raw == "boom":
            raise RuntimeError("a broken listener")
        scans.append(raw)
        if len(scans) == 3:
            done.set()

    async def on_error(scanner_id: str, message: str) -> None:
        raise AssertionError(message)

    async with EmulatedScanner(terminator=b"\r\n") as emulator:
        scanner = SerialScanner(emulator.path, 9600, b"\r\n", on_scan=on_scan, on_error=on_error)
        assert scanner.name == f"scanner:{emulator.path}"
        async with running(scanner):
            await scanner.wait_connected()
            await emulator.send_raw(b"first\r\nboom\r\nsecond\r\nthird\r\n")
            async with asyncio.timeout(3):
                await first_started.wait()
                # Until all four are read and queued behind the blocked first callback. The part has
                # no event for "bytes read" (nothing but this test needs one); sleep(0) only yields.
                while scanner.scans < 4:  # noqa: ASYNC110
                    await asyncio.sleep(0)
            assert scans == []
            gate.set()
            async with asyncio.timeout(3):
                await done.wait()
    assert scans == ["first", "second", "third"]


async def test_serial_partial_scan_times_out() -> None:
    inbox = Inbox()
    async with EmulatedScanner() as emulator:
        scanner = serial_scanner(emulator.path, inbox, partial_timeout_s=SHORT_PARTIAL_S)
        async with running(scanner):
            await scanner.wait_connected()
            await emulator.send_raw(b"01095212")
            message = await inbox.error_matching("partial")
            assert "'01095212'" in message
            await emulator.scan(S1)
            assert await inbox.scan_count(1) == [S1]
    assert len(inbox.errors) == 1


async def test_serial_scanner_reconnects_after_unplug(tmp_path: Path) -> None:
    """A stable link (as /dev/serial/by-id): PTY closed → reported; a new PTY → reconnected."""
    before = _open_fds()
    inbox = Inbox()
    link = tmp_path / "usb-Scanner-if00"
    emulator = EmulatedScanner(link=link)
    scanner = serial_scanner(str(link), inbox)
    async with running(scanner):
        message = await inbox.error_matching("no such port")
        assert "scanner bed1" in message
        assert str(link) in message
        await emulator.plug()
        await scanner.wait_connected()
        await emulator.scan(W1)
        assert await inbox.scan_count(1) == [W1]
        await emulator.unplug()
        message = await inbox.error_matching("went away")
        assert "scanner bed1" in message
        assert not scanner.connected
        await emulator.plug()
        await scanner.wait_connected()
        assert scanner.connections == 2
        await emulator.scan(M1)
        assert await inbox.scan_count(2) == [W1, M1]
    await emulator.unplug()
    assert _open_fds() == before


async def test_wedge_scans_through_a_fifo(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """encode → FIFO → KeyboardWedgeScanner → the same text: GS via Ctrl+], shifted characters,
    autorepeat ignored; the grab fails on a FIFO with a warning and reading goes on."""
    caplog.set_level(logging.WARNING, logger="pumpgw.gateway.scanners")
    inbox = Inbox()
    async with EmulatedKeyboardScanner(tmp_path / "event7") as emulator:
        scanner = wedge_scanner(emulator.path, inbox)
        async with running(scanner):
            await scanner.wait_connected()
            assert not scanner.grabbed
            assert "not grabbed" in caplog.text
            await emulator.scan(W1)
            await emulator.scan("Lot A-7/B; Exp: 2027")
            a = KERNEL_CODES["KEY_A"]
            await emulator.send_events(ev(a, 1) + ev(a, 2) + ev(a, 2) + ev(a, 0) + tap(28))
            emulator.drop_gs = True
            await emulator.scan(M1)
            assert await inbox.scan_count(4) == [W1, "Lot A-7/B; Exp: 2027", "a", M1.replace("\x1d", "")]
    assert inbox.errors == []


async def test_wedge_unknown_key_and_partial_scan(tmp_path: Path) -> None:
    inbox = Inbox()
    async with EmulatedKeyboardScanner(tmp_path / "event7") as emulator:
        scanner = wedge_scanner(emulator.path, inbox, partial_timeout_s=SHORT_PARTIAL_S)
        async with running(scanner):
            await scanner.wait_connected()
            alt = KERNEL_CODES["KEY_LEFTALT"]
            await emulator.send_events(
                emulator.keystrokes("01", terminated=False) + tap(alt) + emulator.keystrokes("09")
            )
            message = await inbox.error_matching("unknown key")
            assert "key code 56 (KEY_LEFTALT)" in message
            assert "scan" in message
            await emulator.send_events(emulator.keystrokes("0109521", terminated=False))
            message = await inbox.error_matching("partial")
            assert "'0109521'" in message
            await emulator.scan(S1)
            assert await inbox.scan_count(1) == [S1]
    assert len(inbox.errors) == 2
    assert [raw for _, raw in inbox.scans] == [S1]  # nothing of the damaged ones was delivered


async def test_wedge_fifo_recreated_reconnects(tmp_path: Path) -> None:
    before = _open_fds()
    inbox = Inbox()
    sleeps = Sleeps()
    path = tmp_path / "event7"
    emulator = EmulatedKeyboardScanner(path)
    scanner = wedge_scanner(str(path), inbox, sleep=sleeps)
    async with running(scanner):
        await inbox.error_matching("no such device")
        await sleeps.at_least(5)
        assert len(inbox.errors) == 1  # reported once, not on every retry
        await emulator.plug()
        await scanner.wait_connected()
        await emulator.scan(A1)
        assert await inbox.scan_count(1) == [A1]
        await emulator.send_events(emulator.keystrokes("0109", terminated=False))
        await emulator.unplug()  # mid-scan: the pipe still delivers what was written, then its end
        await inbox.error_matching("went away")
        partial = await inbox.error_matching("partial")
        assert "'0109'" in partial
        await emulator.plug()
        await scanner.wait_connected()
        assert scanner.connections >= 2
        await emulator.scan(E1)
        assert await inbox.scan_count(2) == [A1, E1]
    await emulator.unplug()
    assert _open_fds() == before


async def test_wedge_refuses_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a device")
    inbox = Inbox()
    scanner = wedge_scanner(str(path), inbox)
    async with running(scanner):
        message = await inbox.error_matching("not an input device")
        assert str(path) in message
    assert not scanner.connected


async def test_scanner_is_a_supervised_part(tmp_path: Path) -> None:
    inbox = Inbox()
    async with EmulatedKeyboardScanner(tmp_path / "event3") as emulator:
        scanner = wedge_scanner(emulator.path, inbox)
        stop = asyncio.Event()
        supervisor = Supervisor([scanner], start_timeout_s=2)
        run = asyncio.create_task(supervisor.run(stop))
        await scanner.wait_connected()
        await emulator.scan(W1)
        assert await inbox.scan_count(1) == [W1]
        stop.set()
        async with asyncio.timeout(3):
            await run  # raises PartFailed if the scanner had failed
    assert not scanner.connected


def test_eviocgrab_number() -> None:
    """_IOW('E', 0x90, int) from linux/input.h in the generic ioctl encoding (asm-generic/ioctl.h)."""
    assert EVIOCGRAB == 0x40044590


async def test_permission_error_names_the_device_and_the_fix(tmp_path: Path) -> None:
    """A device the gateway's user may not read: the message names it and the fix.

    Root reads any file whatever its mode, so as root the test uses a path the kernel refuses to
    root too: a write-only sysctl (/proc/sys/vm/drop_caches, mode 0200; opening it to read fails
    with EACCES and does nothing). Otherwise a FIFO with mode 0.
    """
    if os.geteuid() == 0:
        device = "/proc/sys/vm/drop_caches"
    else:
        fifo = tmp_path / "event9"
        os.mkfifo(fifo, 0)
        device = str(fifo)
    inbox = Inbox()
    scanner = wedge_scanner(device, inbox)
    async with running(scanner):
        message = await inbox.error_matching("no permission")
    assert f"scanner bed1: no permission to read input device {device}" in message
    assert "usermod -aG input pumpgw" in message
    assert not scanner.connected
