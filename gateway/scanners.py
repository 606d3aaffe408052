"""Barcode scanners as supervised parts: how a scan reaches the gateway, as one ``str``.

Two kinds of scanner, both delivering through the same two callbacks:

- :class:`SerialScanner`: a scanner in serial mode (USB-CDC, ``/dev/ttyACM0``; or RS-232), opened
  through pyserial-asyncio-fast as the serial pump drivers open theirs
  (``drivers/serial_link.py``). Bytes are split on the terminator (the scanner's suffix, CR by
  default; set ``b"\\r\\n"`` for a scanner that sends CR LF) by :class:`LineFramer`. Prefer this mode
  at the bedside: GS (0x1D) arrives as the byte it is.
- :class:`KeyboardWedgeScanner`: a USB HID scanner that types its scans as a keyboard, read from its
  evdev device (``/dev/input/eventN``; configure the stable ``/dev/input/by-id/usb-...-event-kbd``
  path, the ``N`` changes between plugs) and decoded by :class:`~pumpgw.gateway.keymap.KeyboardDecoder`.
  The device is grabbed (``EVIOCGRAB``) so the scans do not also type into a console login; grabbing
  is optional and a file that is not an input device (the rig's FIFO) is read without it.

``on_scan(scanner_id, raw)`` gets each scan exactly as the scanner sent it, control characters
included and the terminator removed (parsing is ``gateway/scan.py``'s job). ``on_error(scanner_id,
message)`` gets everything else a nurse or engineer must know: a damaged scan (an unknown key, too
long, not text), a partial scan, the device missing, gone or not readable (with the fix). A damaged
or partial scan is reported, never delivered as a scan. Callbacks may be plain functions or
coroutine functions; they are called one at a time in arrival order; one that raises is logged and
does not stop the scanner.

Bounds: a scan longer than ``max_length`` (1024) is dropped and reported. A scan in progress
followed by ``partial_timeout_s`` (2 s) of silence is dropped and reported as partial: a scanner
sends a whole scan in one burst (tens of milliseconds), so a pause that long is a cable pulled
mid-scan, or a person typing on the scanner's keyboard device, and what came before it is not a scan.

A scanner that is unplugged is a normal bedside event: the part reports it, and reopens the device
with capped, jittered backoff until it is back; each distinct problem is reported once, not on
every retry. The part is ready as soon as it runs (a scanner plugged in later is fine).

Logs name the scanner, the device and the kind of problem, never what was scanned: a wristband
holds the patient's identifiers.
"""

from __future__ import annotations

import asyncio
import codecs
import errno
import fcntl
import inspect
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Final

import serial

from pumpgw.drivers.serial_link import open_serial

from .backoff import Backoff
from .errors import EnvironmentProblem, PumpGwError
from .keymap import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_TERMINATORS,
    NATIVE_LAYOUT,
    DecodeError,
    DecodeProblem,
    EventLayout,
    KeyboardDecoder,
)
from .supervisor import raise_if_cancelling

log = logging.getLogger(__name__)

#: A callback's result: None, or an awaitable the scanner awaits before the next callback.
OnScan = Callable[[str, str], Awaitable[None] | None]
OnError = Callable[[str, str], Awaitable[None] | None]
Sleep = Callable[[float], Awaitable[None]]

DEFAULT_PARTIAL_TIMEOUT_S: Final = 2.0

#: ``EVIOCGRAB`` = ``_IOW('E', 0x90, int)`` (linux/input.h) in the generic ioctl encoding used by
#: x86, ARM, arm64 and RISC-V: direction write (1) << 30 | size 4 << 16 | 'E' (0x45) << 8 | 0x90.
#: (Alpha, MIPS, PowerPC and SPARC encode the direction differently; the gateway does not run there.)
EVIOCGRAB: Final = (1 << 30) | (4 << 16) | (ord("E") << 8) | 0x90

INPUT_PERMISSION_FIX: Final = (
    'give the gateway\'s user read access to the scanner: a udev rule for it (SUBSYSTEM=="input", '
    'ATTRS{idVendor}=="<vid>", ATTRS{idProduct}=="<pid>", GROUP="pumpgw", MODE="0640"), or the '
    "input group (usermod -aG input pumpgw; SupplementaryGroups=input in the systemd unit), which "
    "also lets it read every keyboard; then restart the service"
)
SERIAL_PERMISSION_FIX: Final = (
    "add the gateway's user to the group that owns the port (dialout on Debian: "
    "usermod -aG dialout pumpgw, then restart the service)"
)

#: A session open this long counts as working: the reconnect backoff starts again from its base.
STABLE_SESSION_S: Final = 5.0

#: How long stop() waits for pyserial-asyncio-fast to close the port in its executor thread.
CLOSE_TIMEOUT_S: Final = 2.0


class ScannerError(PumpGwError):
    """The scanner ``scanner`` on ``device`` cannot be read: missing, gone, or not a scanner."""

    def __init__(self, scanner: str, device: str, detail: str) -> None:
        self.scanner = scanner
        self.device = device
        self.detail = detail
        super().__init__(f"scanner {scanner} ({device}): {detail}")


class LineFramer:
    """Sans-I/O: bytes from a serial scanner → scans, split on ``terminator``.

    Same contract as :class:`~pumpgw.gateway.keymap.KeyboardDecoder`: ``feed`` returns finished
    scans (``str``, decoded with ``encoding``, strictly) and damaged ones (:class:`DecodeError`);
    ``pending`` and ``drop_partial`` serve the partial-scan timeout. An empty line is no scan.
    """

    def __init__(
        self, terminator: bytes = b"\r", *, max_length: int = DEFAULT_MAX_LENGTH, encoding: str = "utf-8"
    ) -> None:
        if not terminator:
            raise ValueError("a serial scanner needs a terminator (the scanner's suffix, e.g. b'\\r')")
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, not {max_length}")
        codecs.lookup(encoding)  # LookupError now for an unknown encoding, not at the first scan
        self._terminator = bytes(terminator)
        self._max_length = max_length
        self._encoding = encoding
        self._buffer = bytearray()
        self._dropped = 0  # bytes of this scan discarded past max_length

    @property
    def pending(self) -> bool:
        return bool(self._buffer or self._dropped)

    def feed(self, data: bytes) -> list[str | DecodeError]:
        self._buffer += data
        out: list[str | DecodeError] = []
        while (end := self._buffer.find(self._terminator)) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + len(self._terminator)]
            item = self._finish(line)
            if item is not None:
                out.append(item)
        if len(self._buffer) > self._max_length:
            # Keep what could be the start of a multi-byte terminator; drop the rest of the scan.
            keep = len(self._terminator) - 1
            cut = len(self._buffer) - keep
            self._dropped += cut
            del self._buffer[:cut]
        return out

    def drop_partial(self) -> DecodeError | None:
        if not self.pending:
            return None
        text = self._buffer.decode("latin-1")  # for the report only: every byte as one character
        self._buffer.clear()
        self._dropped = 0
        return DecodeError(
            DecodeProblem.PARTIAL, "the scan stopped before its terminator (no suffix arrived)", text=text
        )

    def _finish(self, line: bytes) -> str | DecodeError | None:
        dropped, self._dropped = self._dropped, 0
        if dropped or len(line) > self._max_length:
            return DecodeError(
                DecodeProblem.TOO_LONG,
                f"{dropped + len(line)} bytes, more than the {self._max_length} a scan may have",
            )
        if not line:
            return None
        try:
            return line.decode(self._encoding)
        except UnicodeDecodeError as exc:
            return DecodeError(
                DecodeProblem.NOT_TEXT,
                f"byte 0x{line[exc.start]:02X} at position {exc.start} is not {self._encoding} text",
                text=line.decode("latin-1"),
            )


Decoder = LineFramer | KeyboardDecoder


class _ScannerPart:
    """What both scanners share: callbacks, the partial-scan timer, reconnecting with backoff."""

    def __init__(
        self,
        scanner_id: str,
        device: str,
        on_scan: OnScan,
        on_error: OnError,
        *,
        partial_timeout_s: float,
        backoff: Backoff | None,
        sleep: Sleep,
    ) -> None:
        if partial_timeout_s <= 0:
            raise ValueError(f"partial_timeout_s must be positive, not {partial_timeout_s}")
        self.scanner_id = scanner_id
        self.device = device
        self.name = f"scanner:{scanner_id}"
        self._on_scan = on_scan
        self._on_error = on_error
        self._partial_timeout_s = partial_timeout_s
        self._backoff = backoff or Backoff(base_s=0.5, cap_s=10.0)
        self._sleep = sleep
        self._queue: asyncio.Queue[str | PumpGwError] = asyncio.Queue()
        self._partial_timer: asyncio.TimerHandle | None = None
        self._connected = asyncio.Event()
        self._last_problem: str | None = None
        self._got_data = False
        self._opened_at: float | None = None
        self.connections = 0  # times the device was opened
        self.scans = 0  # scans delivered
        self.errors = 0  # errors reported

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once the device is open (at once if it is)."""
        await self._connected.wait()

    async def run(self, ready: asyncio.Event) -> None:
        """Read scans until cancelled, reopening the device whenever it goes away."""
        ready.set()  # a scanner not plugged in yet is a bedside state, not a start-up failure
        dispatcher = asyncio.create_task(self._dispatch(), name=f"{self.name}:callbacks")
        try:
            loop = asyncio.get_running_loop()
            while True:
                self._got_data = False
                self._opened_at = None
                try:
                    await self._session()
                except (ScannerError, EnvironmentProblem) as exc:
                    self._problem(exc)
                except Exception as exc:
                    # A bug here must not stop the gateway: report it and try again like any other.
                    log.exception("scanner failed unexpectedly", extra={"scanner": self.scanner_id})
                    detail = f"unexpected {type(exc).__name__}: {exc}"
                    self._problem(ScannerError(self.scanner_id, self.device, detail))
                raise_if_cancelling()
                # Start again from the shortest delay after a session that worked: one that read
                # something, or stayed open a while. A device that vanishes as soon as it is
                # opened (a bad cable) keeps backing off.
                if self._session_worked(loop.time()):
                    self._backoff.reset()
                await self._sleep(self._backoff.next())
        finally:
            self._cancel_partial_timer()
            self._connected.clear()
            dispatcher.cancel()
            await asyncio.wait({dispatcher})

    def _session_worked(self, now: float) -> bool:
        opened_at = self._opened_at
        return opened_at is not None and (self._got_data or now - opened_at >= STABLE_SESSION_S)

    async def _session(self) -> None:
        """Open the device, read until it goes away (then raise ScannerError), close it."""
        raise NotImplementedError

    # -- for the sessions ------------------------------------------------------------------------
    def _opened(self) -> None:
        self._opened_at = asyncio.get_running_loop().time()
        self.connections += 1
        self._connected.set()
        if self._last_problem is not None:
            log.info("scanner connected again", extra={"scanner": self.scanner_id, "device": self.device})
        else:
            log.info("scanner connected", extra={"scanner": self.scanner_id, "device": self.device})
        self._last_problem = None

    def _closed(self, decoder: Decoder) -> None:
        """The device went away: a scan in progress is reported as partial."""
        self._connected.clear()
        self._cancel_partial_timer()
        partial = decoder.drop_partial()
        if partial is not None:
            self._report(partial)

    def _received(self, decoder: Decoder, data: bytes) -> None:
        self._got_data = True
        for item in decoder.feed(data):
            if isinstance(item, str):
                self.scans += 1
                self._queue.put_nowait(item)
            else:
                self._report(item)
        self._cancel_partial_timer()
        if decoder.pending:
            loop = asyncio.get_running_loop()
            self._partial_timer = loop.call_later(self._partial_timeout_s, self._partial_expired, decoder)

    def _partial_expired(self, decoder: Decoder) -> None:
        self._partial_timer = None
        partial = decoder.drop_partial()
        if partial is not None:
            self._report(partial)

    def _cancel_partial_timer(self) -> None:
        if self._partial_timer is not None:
            self._partial_timer.cancel()
            self._partial_timer = None

    def _report(self, error: PumpGwError) -> None:
        self.errors += 1
        kind = error.problem.value if isinstance(error, DecodeError) else type(error).__name__
        log.warning("scan not delivered", extra={"scanner": self.scanner_id, "problem": kind})
        self._queue.put_nowait(error)

    def _problem(self, exc: ScannerError | EnvironmentProblem) -> None:
        """A device problem: reported once until it changes (no report on every retry)."""
        message = str(exc)
        if message == self._last_problem:
            return
        self._last_problem = message
        self.errors += 1
        log.warning("scanner unavailable: %s", message, extra={"scanner": self.scanner_id})
        self._queue.put_nowait(exc)

    async def _dispatch(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if isinstance(item, str):
                    result = self._on_scan(self.scanner_id, item)
                else:
                    result = self._on_error(self.scanner_id, str(item))
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scan callback failed", extra={"scanner": self.scanner_id})


class SerialScanner(_ScannerPart):
    """A serial-mode scanner on ``port`` (a device path, a /dev/serial/by-id link or a pyserial URL).

    ``terminator``: the scanner's suffix; ``encoding``: how its bytes become text (strict: a byte
    that is not valid text damages the scan). ``scanner_id`` defaults to the port.
    """

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        terminator: bytes = b"\r",
        *,
        on_scan: OnScan,
        on_error: OnError,
        scanner_id: str | None = None,
        encoding: str = "utf-8",
        max_length: int = DEFAULT_MAX_LENGTH,
        partial_timeout_s: float = DEFAULT_PARTIAL_TIMEOUT_S,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(
            scanner_id or port,
            port,
            on_scan,
            on_error,
            partial_timeout_s=partial_timeout_s,
            backoff=backoff,
            sleep=sleep,
        )
        self._baudrate = baudrate
        self._framer_args = (terminator, max_length, encoding)
        LineFramer(terminator, max_length=max_length, encoding=encoding)  # check the settings now

    async def _session(self) -> None:
        terminator, max_length, encoding = self._framer_args
        framer = LineFramer(terminator, max_length=max_length, encoding=encoding)
        protocol = _SerialProtocol(self, framer)
        try:
            transport = await open_serial(self.device, self._baudrate, protocol)
        except serial.SerialException as exc:
            raise self._open_error(exc) from exc
        except (OSError, ValueError) as exc:
            raise ScannerError(self.scanner_id, self.device, f"cannot open the port: {exc}") from exc
        self._opened()
        try:
            reason = await asyncio.shield(protocol.lost)
        finally:
            self._closed(framer)
            if not transport.is_closing():
                transport.close()
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.shield(protocol.lost)
            except TimeoutError:
                log.warning("serial port did not close in time", extra={"scanner": self.scanner_id})
        raise ScannerError(self.scanner_id, self.device, f"the port went away (unplugged?): {reason}")

    def _open_error(self, exc: serial.SerialException) -> PumpGwError:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return EnvironmentProblem(
                f"scanner {self.scanner_id}: no permission to open serial port {self.device}",
                SERIAL_PERMISSION_FIX,
            )
        if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            return ScannerError(self.scanner_id, self.device, "no such port: is the scanner plugged in?")
        return ScannerError(self.scanner_id, self.device, f"cannot open the port: {exc.strerror or exc}")


class _SerialProtocol(asyncio.Protocol):
    def __init__(self, scanner: SerialScanner, framer: LineFramer) -> None:
        self._scanner = scanner
        self._framer = framer
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._scanner._received(self._framer, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(str(exc) if exc is not None else "closed")


class KeyboardWedgeScanner(_ScannerPart):
    """A keyboard-wedge scanner read from the input device ``path``.

    ``grab``: take the device for the gateway alone (``EVIOCGRAB``), so keystrokes do not reach
    a console; ``terminators``, ``max_length`` and ``layout`` go to the decoder. ``scanner_id``
    defaults to the path.
    """

    def __init__(
        self,
        path: str,
        *,
        on_scan: OnScan,
        on_error: OnError,
        scanner_id: str | None = None,
        grab: bool = True,
        terminators: frozenset[int] = DEFAULT_TERMINATORS,
        max_length: int = DEFAULT_MAX_LENGTH,
        layout: EventLayout = NATIVE_LAYOUT,
        partial_timeout_s: float = DEFAULT_PARTIAL_TIMEOUT_S,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(
            scanner_id or path,
            path,
            on_scan,
            on_error,
            partial_timeout_s=partial_timeout_s,
            backoff=backoff,
            sleep=sleep,
        )
        self._grab = grab
        self._decoder_args = (terminators, max_length, layout)
        KeyboardDecoder(terminators=terminators, max_length=max_length, layout=layout)  # check now
        # evdev hands out whole events only and refuses a read smaller than one (EINVAL).
        self._read_size = 64 * layout.size
        self.grabbed = False

    async def _session(self) -> None:
        terminators, max_length, layout = self._decoder_args
        decoder = KeyboardDecoder(terminators=terminators, max_length=max_length, layout=layout)
        fd = self._open()
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[str] = loop.create_future()
        try:
            if self._grab:
                self._take(fd)
            self._opened()
            loop.add_reader(fd, self._readable, fd, decoder, lost)
            try:
                reason = await asyncio.shield(lost)
            finally:
                loop.remove_reader(fd)
                self._closed(decoder)
        finally:
            self.grabbed = False
            os.close(fd)  # closing also releases the grab
        raise ScannerError(self.scanner_id, self.device, f"the device went away (unplugged?): {reason}")

    def _open(self) -> int:
        try:
            fd = os.open(self.device, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise EnvironmentProblem(
                    f"scanner {self.scanner_id}: no permission to read input device {self.device}",
                    INPUT_PERMISSION_FIX,
                ) from exc
            if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
                raise ScannerError(
                    self.scanner_id, self.device, "no such device: is the scanner plugged in?"
                ) from exc
            raise ScannerError(
                self.scanner_id, self.device, f"cannot open the device: {exc.strerror or exc}"
            ) from exc
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            os.close(fd)
            raise ScannerError(
                self.scanner_id,
                self.device,
                "not an input device (expected /dev/input/eventN or /dev/input/by-id/...-event-kbd)",
            )
        return fd

    def _take(self, fd: int) -> None:
        try:
            fcntl.ioctl(fd, EVIOCGRAB, 1)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                # Another program holds the grab: it gets every keystroke and we get none.
                self._problem(
                    ScannerError(
                        self.scanner_id,
                        self.device,
                        "another program has grabbed this device, so no scans reach the gateway: "
                        "stop it (a second gateway, a kiosk or barcode daemon)",
                    )
                )
            else:
                log.warning(
                    "scanner device not grabbed (not an evdev device?); its keystrokes also reach "
                    "other readers: %s",
                    exc.strerror or exc,
                    extra={"scanner": self.scanner_id, "device": self.device},
                )
            return
        self.grabbed = True

    def _readable(self, fd: int, decoder: KeyboardDecoder, lost: asyncio.Future[str]) -> None:
        if lost.done():
            return
        try:
            data = os.read(fd, self._read_size)
        except BlockingIOError:
            return
        except OSError as exc:  # ENODEV: unplugged
            asyncio.get_running_loop().remove_reader(fd)
            lost.set_result(f"read failed: {exc.strerror or exc}")
            return
        if not data:  # a FIFO whose writer closed (the rig's unplug); evdev reports ENODEV instead
            asyncio.get_running_loop().remove_reader(fd)
            lost.set_result("end of input (the device was closed)")
            return
        self._received(decoder, data)
