"""The rig's barcode scanners: a serial scanner on a PTY, and a keyboard-wedge scanner on a FIFO.

- :class:`EmulatedScanner` writes scans on the master side of a PTY pair (``os.openpty``, as
  ``rig/pty_link.py`` serves pumps) exactly as a serial-mode scanner does: the text, then the
  terminator (its suffix). The gateway opens :attr:`EmulatedScanner.path` as it opens
  ``/dev/ttyACM0``. ``link`` keeps a symlink pointing at the current PTY, as udev keeps
  ``/dev/serial/by-id/...`` pointing at a scanner across unplug and replug (a new PTY gets a new
  ``/dev/pts/N``).
- :func:`encode_keystrokes` turns text into the Linux input events a USB HID scanner makes a
  keyboard device report (``struct input_event``, see ``gateway/keymap.py``); the inverse of the
  gateway's keymap, written separately from it (its own key table, below) so that the two cannot
  share one mistake. :class:`EmulatedKeyboardScanner` writes them into a FIFO (``os.mkfifo``)
  that the gateway's ``KeyboardWedgeScanner`` reads as if it were ``/dev/input/eventN``; no root,
  no uinput.

Both can misbehave as real wedges do: ``drop_gs=True`` loses every GS (0x1D), the FNC1 separator
(``shared/reference/barcodes.md`` §6, vector N1); ``gs_substitute="|"`` sends a printable
character in its place, as a scanner set up with an FNC1 substitute does.

Unplugging: :meth:`EmulatedScanner.unplug` closes the PTY (the gateway's reads fail with EIO);
:meth:`EmulatedKeyboardScanner.unplug` closes and removes the FIFO (the gateway's read sees end of
input). ``plug`` makes a fresh one at the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import tty
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from pumpgw.gateway.keymap import NATIVE_LAYOUT, EventLayout

GS: Final = "\x1d"

# --- the keyboard, from include/uapi/linux/input-event-codes.h (torvalds/linux) -----------------
# The main block of a US keyboard is four runs of consecutive key codes: KEY_1 = 2 .. KEY_EQUAL = 13,
# KEY_Q = 16 .. KEY_RIGHTBRACE = 27, KEY_A = 30 .. KEY_GRAVE = 41, KEY_BACKSLASH = 43 .. KEY_SLASH = 53.
_ROWS: Final = (
    (2, "1234567890-=", "!@#$%^&*()_+"),
    (16, "qwertyuiop[]", "QWERTYUIOP{}"),
    (30, "asdfghjkl;'`", 'ASDFGHJKL:"~'),
    (43, "\\zxcvbnm,./", "|ZXCVBNM<>?"),
)
EV_SYN_TYPE: Final = 0
EV_KEY_TYPE: Final = 1
EV_MSC_TYPE: Final = 4
SYN_REPORT_CODE: Final = 0
MSC_SCAN_CODE: Final = 4
KEY_SPACE_CODE: Final = 57
KEY_ENTER_CODE: Final = 28
KEY_TAB_CODE: Final = 15
KEY_LEFTSHIFT_CODE: Final = 42
KEY_RIGHTSHIFT_CODE: Final = 54
KEY_LEFTCTRL_CODE: Final = 29
KEY_RIGHTCTRL_CODE: Final = 97


def _key_table() -> dict[str, tuple[int, bool]]:
    table: dict[str, tuple[int, bool]] = {" ": (KEY_SPACE_CODE, False)}
    for first, plain, shifted in _ROWS:
        for offset, (low, high) in enumerate(zip(plain, shifted, strict=True)):
            table[low] = (first + offset, False)
            table[high] = (first + offset, True)
    return table


#: character → (key code, Shift held), for the printable ASCII characters 0x20..0x7E.
KEYS: Final = _key_table()


def keystroke(char: str) -> tuple[int, bool, bool]:
    """How a US keyboard types ``char``: (key code, Shift, Ctrl). Raises ValueError if it cannot.

    Control characters 0x00..0x1F are Ctrl + the character 0x40 above (Ctrl+] for GS, Ctrl+M for
    CR): a wedge scanner's control-character emulation. Tab and CR are sent this way too, so that
    they stay data and never end the scan.
    """
    code = ord(char)
    if code < 0x20:
        key, shift = KEYS[chr(code + 0x60)] if 0x01 <= code <= 0x1A else KEYS[chr(code + 0x40)]
        return key, shift, True
    if char in KEYS:
        key, shift = KEYS[char]
        return key, shift, False
    raise ValueError(f"no key on a US keyboard types {char!r} (U+{code:04X}); a scanner cannot send it")


def input_event(
    type_: int, code: int, value: int, *, layout: EventLayout = NATIVE_LAYOUT, time_s: float = 0.0
) -> bytes:
    """One ``struct input_event``."""
    seconds = int(time_s)
    return layout.pack(seconds, round((time_s - seconds) * 1_000_000), type_, code, value)


def encode_keystrokes(
    text: str,
    *,
    layout: EventLayout = NATIVE_LAYOUT,
    terminator_key: int | None = KEY_ENTER_CODE,
    shift_key: int = KEY_LEFTSHIFT_CODE,
    ctrl_key: int = KEY_LEFTCTRL_CODE,
    msc_scan: bool = True,
    time_s: float = 0.0,
) -> bytes:
    """The input events a wedge scanner makes the kernel report for typing ``text`` + terminator.

    Per character: Ctrl and/or Shift pressed, the key pressed and released, the modifiers
    released, with a ``SYN_REPORT`` after each and (``msc_scan``) an ``MSC_SCAN`` before each key
    event, as the kernel's HID keyboard driver reports them (its value here is the key code, not the
    HID usage: the gateway ignores it). ``terminator_key=None`` leaves the scan unfinished.
    Raises ValueError for a character no US keyboard types (outside ASCII 0x00..0x7E).
    """
    out = bytearray()

    def emit(type_: int, code: int, value: int) -> None:
        out.extend(input_event(type_, code, value, layout=layout, time_s=time_s))

    def press(code: int, value: int) -> None:
        if msc_scan:
            emit(EV_MSC_TYPE, MSC_SCAN_CODE, code)
        emit(EV_KEY_TYPE, code, value)
        emit(EV_SYN_TYPE, SYN_REPORT_CODE, 0)

    for char in text:
        key, shift, ctrl = keystroke(char)
        modifiers = [m for m, on in ((ctrl_key, ctrl), (shift_key, shift)) if on]
        for modifier in modifiers:
            press(modifier, 1)
        press(key, 1)
        press(key, 0)
        for modifier in reversed(modifiers):
            press(modifier, 0)
    if terminator_key is not None:
        press(terminator_key, 1)
        press(terminator_key, 0)
    return bytes(out)


def wire_text(text: str, *, drop_gs: bool = False, gs_substitute: str | None = None) -> str:
    """What a scanner set up this way sends for ``text``: GS kept, dropped, or replaced."""
    if drop_gs and gs_substitute is not None:
        raise ValueError("a scanner either drops GS or substitutes it, not both")
    if drop_gs:
        return text.replace(GS, "")
    if gs_substitute is not None:
        return text.replace(GS, gs_substitute)
    return text


async def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to the non-blocking ``fd``, waiting for room through the event loop."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            room = asyncio.Event()
            loop.add_writer(fd, room.set)
            try:
                await room.wait()
            finally:
                loop.remove_writer(fd)
            continue
        view = view[written:]


class EmulatedScanner:
    """A serial-mode barcode scanner on a fresh PTY. Use ``async with`` or ``plug``/``unplug``.

    ``terminator``: the suffix after each scan; ``encoding``: how text becomes bytes; ``link``: a
    path kept as a symlink to the current PTY (the stable name the gateway is configured with).
    """

    def __init__(
        self,
        *,
        terminator: bytes = b"\r",
        drop_gs: bool = False,
        gs_substitute: str | None = None,
        encoding: str = "utf-8",
        link: str | Path | None = None,
    ) -> None:
        wire_text("", drop_gs=drop_gs, gs_substitute=gs_substitute)  # check the combination now
        self.terminator = terminator
        self.drop_gs = drop_gs
        self.gs_substitute = gs_substitute
        self.encoding = encoding
        self._link = Path(link) if link is not None else None
        self._master: int | None = None
        self._slave: int | None = None
        self._pty: str | None = None

    @property
    def path(self) -> str:
        """What the gateway opens: the link if there is one, else the PTY's slave path."""
        if self._link is not None:
            return str(self._link)
        if self._pty is None:
            raise RuntimeError("EmulatedScanner is not plugged in: no PTY yet")
        return self._pty

    @property
    def plugged(self) -> bool:
        return self._master is not None

    async def plug(self) -> None:
        """Make a fresh PTY (and point the link at it). Raises RuntimeError if plugged in."""
        if self._master is not None:
            raise RuntimeError(f"EmulatedScanner already plugged in at {self._pty}")
        master, slave = os.openpty()
        try:
            # Raw: no echo, and CR stays CR (the line discipline would turn it into LF).
            tty.setraw(slave)
            pty = os.ttyname(slave)
            os.set_blocking(master, False)
            if self._link is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._link.unlink()
                self._link.symlink_to(pty)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        # The slave stays open here too, so writing to the master works before the gateway opens it.
        self._master, self._slave, self._pty = master, slave, pty

    async def unplug(self) -> None:
        """Close the PTY, as pulling the USB cable removes the device. Idempotent."""
        master, slave = self._master, self._slave
        self._master = self._slave = None
        if self._link is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link.unlink()
        for fd in (master, slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def scan(self, text: str) -> None:
        """Send ``text`` as the scanner would: GS kept, dropped or substituted, then the terminator."""
        sent = wire_text(text, drop_gs=self.drop_gs, gs_substitute=self.gs_substitute)
        await self.send_raw(sent.encode(self.encoding) + self.terminator)

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (a partial scan, garbage). Raises RuntimeError if unplugged."""
        if self._master is None:
            raise RuntimeError("EmulatedScanner is not plugged in")
        await _write_all(self._master, data)

    async def __aenter__(self) -> Self:
        await self.plug()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.unplug()


class EmulatedKeyboardScanner:
    """A keyboard-wedge scanner as a FIFO at ``path`` carrying ``struct input_event`` records.

    The FIFO is held open for reading and writing here (Linux allows ``O_RDWR`` on a FIFO), so a
    scan can be written before the gateway opens it and never blocks; closing it is the unplug the
    gateway sees as end of input. Keyword arguments go to :func:`encode_keystrokes`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        layout: EventLayout = NATIVE_LAYOUT,
        terminator_key: int = KEY_ENTER_CODE,
        shift_key: int = KEY_LEFTSHIFT_CODE,
        ctrl_key: int = KEY_LEFTCTRL_CODE,
        drop_gs: bool = False,
        gs_substitute: str | None = None,
    ) -> None:
        wire_text("", drop_gs=drop_gs, gs_substitute=gs_substitute)
        self._path = Path(path)
        self.layout = layout
        self.terminator_key = terminator_key
        self.shift_key = shift_key
        self.ctrl_key = ctrl_key
        self.drop_gs = drop_gs
        self.gs_substitute = gs_substitute
        self._fd: int | None = None

    @property
    def path(self) -> str:
        return str(self._path)

    @property
    def plugged(self) -> bool:
        return self._fd is not None

    async def plug(self) -> None:
        """Create the FIFO (if absent) and open it. Raises RuntimeError if plugged in, and
        FileExistsError if something else than a FIFO is at the path."""
        if self._fd is not None:
            raise RuntimeError(f"EmulatedKeyboardScanner already plugged in at {self._path}")
        try:
            os.mkfifo(self._path, 0o600)
        except FileExistsError:
            if not stat.S_ISFIFO(os.stat(self._path).st_mode):
                raise
        self._fd = os.open(self._path, os.O_RDWR | os.O_NONBLOCK)

    async def unplug(self) -> None:
        """Close and remove the FIFO: the gateway's reader sees end of input. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    async def scan(self, text: str) -> None:
        """Type ``text`` (GS kept, dropped or substituted) and the terminator key."""
        sent = wire_text(text, drop_gs=self.drop_gs, gs_substitute=self.gs_substitute)
        await self.send_events(self.keystrokes(sent))

    def keystrokes(self, text: str, *, terminated: bool = True) -> bytes:
        """The events for ``text`` with this scanner's settings (no GS handling)."""
        return encode_keystrokes(
            text,
            layout=self.layout,
            terminator_key=self.terminator_key if terminated else None,
            shift_key=self.shift_key,
            ctrl_key=self.ctrl_key,
        )

    async def send_events(self, data: bytes) -> None:
        """Write raw event bytes (a partial scan, an unknown key). Raises RuntimeError if unplugged."""
        if self._fd is None:
            raise RuntimeError("EmulatedKeyboardScanner is not plugged in")
        await _write_all(self._fd, data)

    async def __aenter__(self) -> Self:
        await self.plug()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.unplug()
