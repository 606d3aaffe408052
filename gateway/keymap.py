"""Keyboard-wedge barcode scanners read from a Linux input device: ``struct input_event`` bytes → scans.

Sans-I/O: :class:`KeyboardDecoder` takes the bytes read from ``/dev/input/eventN`` (the evdev
interface) and returns each scan as the ``str`` the scanner typed, or a :class:`DecodeError` for a
scan that cannot be trusted. No file, no ioctl, no clock here (``gateway/scanners.py`` does those).

The wire (Linux ``include/uapi/linux/input.h``): every event is a ``struct input_event``::

    struct timeval time;   /* two C longs: seconds, microseconds */
    __u16 type;
    __u16 code;
    __s32 value;

in the reading process's native byte order and word size: 24 bytes where ``long`` is 8 bytes (LP64:
x86-64, arm64), 16 bytes where it is 4 (a 32-bit Raspberry Pi OS, or a 32-bit process on a 64-bit
kernel, which gets the compat layout). :data:`NATIVE_LAYOUT` is this process's; pass
``layout=EventLayout.BITS32`` or ``BITS64`` to read a recording made elsewhere.

A key press is ``type EV_KEY``, ``code KEY_*``, ``value`` 1 (press), 0 (release) or 2 (autorepeat).
Event types and key codes are those of ``include/uapi/linux/input-event-codes.h`` (torvalds/linux).

Decoding rules:

- Only ``EV_KEY`` events carry text. ``EV_SYN`` (``SYN_REPORT``) and ``EV_MSC`` (``MSC_SCAN``, the raw
  HID usage the kernel reports before each key) are ignored, and so are the other types a keyboard
  device can report (``EV_LED``, ``EV_REP``). ``EV_SYN``/``SYN_DROPPED`` is not ignored: the kernel's
  buffer overflowed and keystrokes were lost, so the scan in progress is damaged, and the held
  modifiers are forgotten (a lost release must not leave Shift stuck for the next scan).
- Autorepeat (value 2) is ignored: a scanner never holds a key down, and a repeat would double a
  character. Releases carry no text; they only update the modifier state.
- US layout. Shift (left or right) gives the shifted character. Ctrl (left or right) turns the
  character into its ASCII control code, as terminals do (``ord(char) & 0x1F`` for ``@``..``_`` and
  ``a``..``z``): Ctrl+] is GS (0x1D), the GS1 FNC1 separator; Ctrl+^ (Ctrl+Shift+6) is RS and Ctrl+D
  is EOT, which ISO/IEC 15434 envelopes use; Ctrl+M is CR *as data*.
- GS matters: a GS1 DataMatrix or GS1-128 symbol separates variable-length fields with FNC1, sent as
  GS (0x1D), a control character no key types. Most wedge scanners can be set to send it as Ctrl+],
  (the scanner's "control character" or "function key" emulation), or to send a printable
  substitute (``|``, ``~``) that the scan parser is told about; a scanner that drops it silently
  turns ``10ABC123<GS>21SN0001`` into one lot number (``shared/reference/barcodes.md`` §6 and
  vector N1). This module keeps whatever arrives, GS or substitute, exactly as sent.
- A terminator key ends the scan: Enter, keypad Enter or Tab by default (the scanner's suffix;
  configurable). A terminator with nothing before it is no scan and is ignored.
- Keypad digits and ``* - + . /`` are taken as typed with NumLock on (the "keypad emulation" of
  many scanners); with Shift or Ctrl held their meaning depends on NumLock, so they damage the scan.
- A key the map does not know (Alt, CapsLock, F-keys, Backspace, Esc, a Ctrl combination with no
  control code) damages the scan: the rest of it is still read up to its terminator and the whole
  scan is reported as a :class:`DecodeError` naming the key code, never delivered as text. A scan
  cut at an unknown key and delivered in two parts could otherwise parse as a shorter valid code.
- A scan longer than ``max_length`` characters is reported as too long (the rest, up to its
  terminator, is counted and dropped): memory stays bounded whatever a device sends.
- Alt+keypad code entry (Alt+029 for GS, some scanners' "ALT mode") is not supported: Alt damages
  the scan. Configure the scanner for Ctrl+] or a substitute character instead.

A partial scan followed by silence is the caller's to time: :attr:`KeyboardDecoder.pending` says a
scan is in progress and :meth:`KeyboardDecoder.drop_partial` reports and discards it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import StrEnum
from typing import Final

from .errors import PumpGwError

# --- numbers from include/uapi/linux/input-event-codes.h (torvalds/linux) ---------------------------
EV_SYN: Final = 0x00
EV_KEY: Final = 0x01
EV_MSC: Final = 0x04
SYN_REPORT: Final = 0
SYN_DROPPED: Final = 3
MSC_SCAN: Final = 0x04

KEY_RELEASE: Final = 0
KEY_PRESS: Final = 1
KEY_REPEAT: Final = 2

KEY_ESC: Final = 1
KEY_1: Final = 2
KEY_2: Final = 3
KEY_3: Final = 4
KEY_4: Final = 5
KEY_5: Final = 6
KEY_6: Final = 7
KEY_7: Final = 8
KEY_8: Final = 9
KEY_9: Final = 10
KEY_0: Final = 11
KEY_MINUS: Final = 12
KEY_EQUAL: Final = 13
KEY_BACKSPACE: Final = 14
KEY_TAB: Final = 15
KEY_Q: Final = 16
KEY_W: Final = 17
KEY_E: Final = 18
KEY_R: Final = 19
KEY_T: Final = 20
KEY_Y: Final = 21
KEY_U: Final = 22
KEY_I: Final = 23
KEY_O: Final = 24
KEY_P: Final = 25
KEY_LEFTBRACE: Final = 26
KEY_RIGHTBRACE: Final = 27
KEY_ENTER: Final = 28
KEY_LEFTCTRL: Final = 29
KEY_A: Final = 30
KEY_S: Final = 31
KEY_D: Final = 32
KEY_F: Final = 33
KEY_G: Final = 34
KEY_H: Final = 35
KEY_J: Final = 36
KEY_K: Final = 37
KEY_L: Final = 38
KEY_SEMICOLON: Final = 39
KEY_APOSTROPHE: Final = 40
KEY_GRAVE: Final = 41
KEY_LEFTSHIFT: Final = 42
KEY_BACKSLASH: Final = 43
KEY_Z: Final = 44
KEY_X: Final = 45
KEY_C: Final = 46
KEY_V: Final = 47
KEY_B: Final = 48
KEY_N: Final = 49
KEY_M: Final = 50
KEY_COMMA: Final = 51
KEY_DOT: Final = 52
KEY_SLASH: Final = 53
KEY_RIGHTSHIFT: Final = 54
KEY_KPASTERISK: Final = 55
KEY_LEFTALT: Final = 56
KEY_SPACE: Final = 57
KEY_CAPSLOCK: Final = 58
KEY_NUMLOCK: Final = 69
KEY_KP7: Final = 71
KEY_KP8: Final = 72
KEY_KP9: Final = 73
KEY_KPMINUS: Final = 74
KEY_KP4: Final = 75
KEY_KP5: Final = 76
KEY_KP6: Final = 77
KEY_KPPLUS: Final = 78
KEY_KP1: Final = 79
KEY_KP2: Final = 80
KEY_KP3: Final = 81
KEY_KP0: Final = 82
KEY_KPDOT: Final = 83
KEY_KPENTER: Final = 96
KEY_RIGHTCTRL: Final = 97
KEY_KPSLASH: Final = 98
KEY_RIGHTALT: Final = 100
KEY_LEFTMETA: Final = 125
KEY_RIGHTMETA: Final = 126

SHIFT_KEYS: Final = frozenset({KEY_LEFTSHIFT, KEY_RIGHTSHIFT})
CTRL_KEYS: Final = frozenset({KEY_LEFTCTRL, KEY_RIGHTCTRL})
_MODIFIERS: Final = SHIFT_KEYS | CTRL_KEYS

#: Keys that end a scan unless the decoder is given others.
DEFAULT_TERMINATORS: Final = frozenset({KEY_ENTER, KEY_KPENTER, KEY_TAB})
DEFAULT_MAX_LENGTH: Final = 1024

# US layout: key → (unshifted, shifted). Enter and Tab type CR and HT when they are not terminators.
US_LAYOUT: Final[dict[int, tuple[str, str]]] = {
    KEY_1: ("1", "!"),
    KEY_2: ("2", "@"),
    KEY_3: ("3", "#"),
    KEY_4: ("4", "$"),
    KEY_5: ("5", "%"),
    KEY_6: ("6", "^"),
    KEY_7: ("7", "&"),
    KEY_8: ("8", "*"),
    KEY_9: ("9", "("),
    KEY_0: ("0", ")"),
    KEY_MINUS: ("-", "_"),
    KEY_EQUAL: ("=", "+"),
    KEY_Q: ("q", "Q"),
    KEY_W: ("w", "W"),
    KEY_E: ("e", "E"),
    KEY_R: ("r", "R"),
    KEY_T: ("t", "T"),
    KEY_Y: ("y", "Y"),
    KEY_U: ("u", "U"),
    KEY_I: ("i", "I"),
    KEY_O: ("o", "O"),
    KEY_P: ("p", "P"),
    KEY_LEFTBRACE: ("[", "{"),
    KEY_RIGHTBRACE: ("]", "}"),
    KEY_A: ("a", "A"),
    KEY_S: ("s", "S"),
    KEY_D: ("d", "D"),
    KEY_F: ("f", "F"),
    KEY_G: ("g", "G"),
    KEY_H: ("h", "H"),
    KEY_J: ("j", "J"),
    KEY_K: ("k", "K"),
    KEY_L: ("l", "L"),
    KEY_SEMICOLON: (";", ":"),
    KEY_APOSTROPHE: ("'", '"'),
    KEY_GRAVE: ("`", "~"),
    KEY_BACKSLASH: ("\\", "|"),
    KEY_Z: ("z", "Z"),
    KEY_X: ("x", "X"),
    KEY_C: ("c", "C"),
    KEY_V: ("v", "V"),
    KEY_B: ("b", "B"),
    KEY_N: ("n", "N"),
    KEY_M: ("m", "M"),
    KEY_COMMA: (",", "<"),
    KEY_DOT: (".", ">"),
    KEY_SLASH: ("/", "?"),
    KEY_SPACE: (" ", " "),
    KEY_ENTER: ("\r", "\r"),
    KEY_KPENTER: ("\r", "\r"),
    KEY_TAB: ("\t", "\t"),
}

# The keypad with NumLock on; only without modifiers (see the module docstring).
KEYPAD: Final[dict[int, str]] = {
    KEY_KP0: "0",
    KEY_KP1: "1",
    KEY_KP2: "2",
    KEY_KP3: "3",
    KEY_KP4: "4",
    KEY_KP5: "5",
    KEY_KP6: "6",
    KEY_KP7: "7",
    KEY_KP8: "8",
    KEY_KP9: "9",
    KEY_KPASTERISK: "*",
    KEY_KPMINUS: "-",
    KEY_KPPLUS: "+",
    KEY_KPDOT: ".",
    KEY_KPSLASH: "/",
}

# Names for error messages, for the keys above and the unmapped ones a scanner is likely to send.
_NOT_KEYS: Final = ("KEY_RELEASE", "KEY_PRESS", "KEY_REPEAT")  # event values, not key codes
KEY_NAMES: Final[dict[int, str]] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("KEY_") and isinstance(value, int) and name not in _NOT_KEYS
}


class EventLayout(StrEnum):
    """The ``struct`` format of one ``struct input_event`` (native byte order, no padding)."""

    BITS64 = "=qqHHi"  # struct timeval of two 8-byte longs: 24 bytes
    BITS32 = "=llHHi"  # with "=", l is 4 bytes: two 4-byte longs, 16 bytes

    @property
    def size(self) -> int:
        return _STRUCTS[self].size

    def pack(self, seconds: int, microseconds: int, type_: int, code: int, value: int) -> bytes:
        return _STRUCTS[self].pack(seconds, microseconds, type_, code, value)


_STRUCTS: Final = {layout: struct.Struct(layout.value) for layout in EventLayout}

#: The layout this process reads from the kernel: ``struct.calcsize("@llHHi")`` is 24 or 16.
NATIVE_LAYOUT: Final = EventLayout.BITS64 if struct.calcsize("@l") == 8 else EventLayout.BITS32


class DecodeProblem(StrEnum):
    UNKNOWN_KEY = "unknown key"  # a key (or key combination) with no character in the map
    EVENTS_LOST = "events lost"  # the kernel reported SYN_DROPPED inside the scan
    TOO_LONG = "too long"  # more than max_length characters before the terminator
    PARTIAL = "partial"  # no terminator came (the caller decided the silence was too long)
    NOT_TEXT = "not text"  # (serial scanners) bytes that are not text in the configured encoding


def key_name(code: int) -> str:
    """``KEY_LEFTALT`` for 56; ``key 300`` for a code this module has no name for."""
    return KEY_NAMES.get(code, f"key {code}")


class DecodeError(PumpGwError):
    """A damaged scan. ``problem`` says what went wrong, ``detail`` names it (the key code, the
    length); ``text`` is what was read of the scan before it was given up, for the audit trail."""

    def __init__(
        self, problem: DecodeProblem, detail: str, *, text: str = "", key_codes: Iterable[int] = ()
    ) -> None:
        self.problem = problem
        self.detail = detail
        self.text = text
        self.key_codes = tuple(key_codes)
        shown = text[:64].encode("unicode_escape").decode("ascii")
        more = "..." if len(text) > 64 else ""
        super().__init__(
            f"damaged scan ({problem}): {detail}; read before it was given up: '{shown}{more}'"
            f" ({len(text)} characters)"
        )


def control_character(char: str) -> str | None:
    """The ASCII control code Ctrl+``char`` types (Ctrl+] → GS), or None if there is none."""
    code = ord(char)
    if 0x40 <= code <= 0x5F or 0x61 <= code <= 0x7A:  # @ A-Z [ \ ] ^ _ and a-z
        return chr(code & 0x1F)
    return None


class KeyboardDecoder:
    """``struct input_event`` bytes → scans. Feed it whatever was read; it keeps partial events.

    ``terminators``: the key codes that end a scan; ``max_length``: the longest scan accepted, in
    characters; ``layout``: see :class:`EventLayout`.
    """

    def __init__(
        self,
        *,
        layout: EventLayout = NATIVE_LAYOUT,
        terminators: Iterable[int] = DEFAULT_TERMINATORS,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, not {max_length}")
        self._struct = _STRUCTS[layout]
        self._terminators = frozenset(terminators)
        if not self._terminators:
            raise ValueError("a keyboard scanner needs at least one terminator key")
        self._max_length = max_length
        self._buffer = bytearray()
        self._held: set[int] = set()  # modifiers held down
        self._text: list[str] = []
        self._unknown: list[tuple[int, str]] = []  # (key code, "with Ctrl" etc.) that damaged the scan
        self._overflow = 0  # characters dropped past max_length
        self._lost = False  # SYN_DROPPED inside this scan
        self.events = 0  # input events decoded so far (all types)

    @property
    def pending(self) -> bool:
        """A scan has begun and not ended: something was typed since the last terminator."""
        return bool(self._text or self._unknown or self._overflow or self._lost)

    def feed(self, data: bytes) -> list[str | DecodeError]:
        """Decode ``data``; return the scans (and damaged scans) it completed, in order."""
        self._buffer += data
        usable = len(self._buffer) - len(self._buffer) % self._struct.size
        if not usable:
            return []
        chunk = bytes(self._buffer[:usable])
        del self._buffer[:usable]
        out: list[str | DecodeError] = []
        for _sec, _usec, type_, code, value in self._struct.iter_unpack(chunk):
            self.events += 1
            if type_ == EV_KEY:
                item = self._key(code, value)
                if item is not None:
                    out.append(item)
            elif type_ == EV_SYN and code == SYN_DROPPED:
                self._lost = True
                self._held.clear()
        return out

    def drop_partial(self) -> DecodeError | None:
        """Give up the scan in progress (no terminator came): a PARTIAL error, or None if none."""
        if not self.pending:
            return None
        text = "".join(self._text)
        self._reset_scan()
        return DecodeError(
            DecodeProblem.PARTIAL,
            "the scan stopped before its terminator (a wedge scanner types a scan in one burst)",
            text=text,
        )

    def reset(self) -> None:
        """Forget everything: partial events, the scan in progress and the held modifiers."""
        self._buffer.clear()
        self._held.clear()
        self._reset_scan()

    # -- internals ---------------------------------------------------------------------------------
    def _reset_scan(self) -> None:
        self._text = []
        self._unknown = []
        self._overflow = 0
        self._lost = False

    def _key(self, code: int, value: int) -> str | DecodeError | None:
        if value == KEY_REPEAT:
            return None
        if code in _MODIFIERS:
            if value == KEY_PRESS:
                self._held.add(code)
            else:
                self._held.discard(code)
            return None
        if value == KEY_RELEASE:
            return None
        if value != KEY_PRESS:
            self._unknown.append((code, f"with event value {value}"))
            return None
        if code in self._terminators:
            return self._end()
        char, context = self._char(code)
        if char is None:
            self._unknown.append((code, context))
        elif len(self._text) < self._max_length:
            self._text.append(char)
        else:
            self._overflow += 1
        return None

    def _char(self, code: int) -> tuple[str | None, str]:
        shift = not self._held.isdisjoint(SHIFT_KEYS)
        ctrl = not self._held.isdisjoint(CTRL_KEYS)
        held = "+".join(name for name, on in (("Ctrl", ctrl), ("Shift", shift)) if on)
        context = f"with {held}" if held else ""
        keypad = KEYPAD.get(code)
        if keypad is not None:
            return (keypad, "") if not (shift or ctrl) else (None, context)
        pair = US_LAYOUT.get(code)
        if pair is None:
            return None, context
        char = pair[1] if shift else pair[0]
        if ctrl:
            return control_character(char), context
        return char, ""

    def _end(self) -> str | DecodeError | None:
        text = "".join(self._text)
        unknown, overflow, lost = self._unknown, self._overflow, self._lost
        self._reset_scan()
        if overflow:
            return DecodeError(
                DecodeProblem.TOO_LONG,
                f"{len(text) + overflow} characters, more than the {self._max_length} a scan may have",
                text=text,
                key_codes=[code for code, _ in unknown],
            )
        if unknown:
            keys = ", ".join(
                f"key code {code} ({key_name(code)}{' ' + context if context else ''})"
                for code, context in unknown
            )
            return DecodeError(
                DecodeProblem.UNKNOWN_KEY,
                f"{keys} not in the US key map of this decoder",
                text=text,
                key_codes=[code for code, _ in unknown],
            )
        if lost:
            return DecodeError(
                DecodeProblem.EVENTS_LOST,
                "the kernel dropped input events during the scan (SYN_DROPPED): keystrokes are missing",
                text=text,
            )
        return text or None
