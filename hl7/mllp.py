"""MLLP framing of HL7 v2 messages, without I/O: bytes in, events out.

MLLP (the Minimal Lower Layer Protocol, HL7 v2.x Appendix C; IHE ITI TF-2 and PCD TF-2 require it
for HL7 v2 over TCP) wraps each message in a start block and an end block::

    0x0b <message bytes> 0x1c 0x0d
    START                END

The framer never looks inside a message: segment separators (``\\r``, or the ``\\n`` / ``\\r\\n`` some
senders use), character sets and content are the parser's business. It only finds where each
message begins and ends, and says what it had to drop on the way.

Sending: :func:`frame` wraps one message. A message that itself contains 0x0b or 0x1c cannot be
framed (MLLP has no escape for them, and HL7 text never contains them): :class:`Hl7Error`.

Receiving: :class:`MllpDecoder` takes bytes as they come off the wire, in chunks of any size, split
anywhere, and returns events:

``Frame(message)``
    one complete message, the bytes between START and END exactly.
``Garbage(data, reason, size)``
    bytes that were dropped: bytes between frames that do not start a frame, or the beginning of a
    frame abandoned because a new START arrived before its END. ``size`` is how many bytes were
    dropped; ``data`` keeps only the first 64 of them, for the report. A run of bytes between
    frames is reported once, when it ends (a START arrives or the stream ends), or every
    ``max_message_bytes`` bytes if it never ends.
``Oversize(size, limit)``
    a frame grew beyond ``max_message_bytes``. It is reported as soon as it crosses the limit
    (``size`` is how many bytes of it had arrived then: the frame is at least that long); its bytes
    are dropped up to its END (or the next START), then decoding carries on with the next frame.
``Truncated(size, data)``
    the stream ended (:meth:`MllpDecoder.eof`) inside a frame: ``size`` bytes of it had arrived,
    ``data`` holds the first 64.

What is tolerated, and how (each decision is tested in ``tests/test_mllp.py``):

* **END as 0x1c alone.** A frame ends at its 0x1c; a 0x0d right after it is consumed as the second
  byte of END. Any other byte after the 0x1c is read as the first byte after the frame (a START,
  or garbage that is reported). So a sender that ends frames with 0x1c alone, or closes the
  connection right after the 0x1c, still has every message delivered, and nothing waits for a
  0x0d that never comes. 0x1c cannot occur inside HL7 text, so this never cuts a message short.
* **Line ends between frames.** Bytes between frames that are all CR or LF (``0x1c 0x0d 0x0a``,
  a newline typed into a test tool) are dropped without a report: they carry nothing, and a
  report per message would drown real problems. Any other byte between frames is reported.
* **A START inside a frame** abandons the partial frame (reported as ``Garbage``) and begins a
  new one: START can only mean that the sender gave up on the previous message and began again.
* **A stray END between frames** is garbage (reported).

Memory is bounded whatever arrives: at most ``max_message_bytes`` of one partial frame plus 64
bytes of the garbage being counted (:attr:`MllpDecoder.buffered`).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from pumpgw.gateway.errors import Hl7Error

__all__ = [
    "END",
    "START",
    "Frame",
    "Garbage",
    "MllpDecoder",
    "MllpEvent",
    "Oversize",
    "Truncated",
    "frame",
]

START = b"\x0b"  # VT: start block
END = b"\x1c\r"  # FS CR: end block
_FS = 0x1C
_CR = 0x0D
_START_BYTE = 0x0B
_SPECIAL = re.compile(b"[\x0b\x1c]")  # the bytes that end the run of plain bytes inside a frame
_NEWLINES = b"\r\n"
REPORT_BYTES = 64  # bytes of dropped data kept for a report

DEFAULT_MAX_MESSAGE_BYTES = 1_048_576

_OUTSIDE_REASON = "bytes outside a frame (an MLLP frame starts with 0x0b)"
_ABANDONED_REASON = "frame abandoned: a new start block 0x0b arrived before its end block 0x1c 0x0d"


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete message: the bytes between START and END, untouched."""

    message: bytes


@dataclass(frozen=True, slots=True)
class Garbage:
    """``size`` bytes were dropped for ``reason``; ``data`` is the first 64 of them."""

    data: bytes
    reason: str
    size: int


@dataclass(frozen=True, slots=True)
class Oversize:
    """A frame passed ``limit`` bytes (``size`` had arrived when it did); it is being dropped."""

    size: int
    limit: int


@dataclass(frozen=True, slots=True)
class Truncated:
    """The stream ended inside a frame after ``size`` bytes of it; ``data`` is the first 64."""

    size: int
    data: bytes = b""


MllpEvent = Frame | Garbage | Oversize | Truncated


def frame(message: bytes) -> bytes:
    """``message`` wrapped in START and END. Raises Hl7Error if it contains 0x0b or 0x1c."""
    found = _SPECIAL.search(message)
    if found is not None:
        byte = message[found.start()]
        what = "start block 0x0b" if byte == _START_BYTE else "end block byte 0x1c"
        raise Hl7Error(
            f"the message contains the MLLP {what} at byte {found.start()}; "
            "MLLP cannot carry it (HL7 text never contains 0x0b or 0x1c)"
        )
    return START + message + END


class _State(enum.Enum):
    OUTSIDE = "between frames, looking for START"
    INSIDE = "inside a frame, collecting its bytes"
    AFTER_END = "just after a 0x1c: a 0x0d here completes END"
    DISCARD = "inside an oversize frame, dropping its bytes"


class MllpDecoder:
    """Turns a byte stream into :data:`MllpEvent` s. One decoder per connection (or stream).

    ``feed`` never raises on any input; :meth:`eof` reports what the end of the stream left
    unfinished and makes the decoder ready for a new stream.
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be at least 1, not {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        self._state = _State.OUTSIDE
        self._buffer = bytearray()  # the partial frame (INSIDE)
        self._dropped = 0  # bytes of the current oversize frame seen so far (DISCARD)
        self._garbage_head = bytearray()  # first REPORT_BYTES of the current garbage run
        self._garbage_size = 0
        self._garbage_blank = True  # the garbage run holds only CR and LF so far

    @property
    def in_frame(self) -> bool:
        """True between a START and its END: the peer owes the rest of a frame."""
        return self._state in (_State.INSIDE, _State.DISCARD)

    @property
    def frame_bytes(self) -> int:
        """How many bytes of the unfinished frame have arrived (0 when not in a frame)."""
        if self._state is _State.INSIDE:
            return len(self._buffer)
        if self._state is _State.DISCARD:
            return self._dropped
        return 0

    @property
    def buffered(self) -> int:
        """Bytes held in memory: never more than ``max_message_bytes`` + 64."""
        return len(self._buffer) + len(self._garbage_head)

    def feed(self, data: bytes) -> list[MllpEvent]:
        """Decode ``data`` (the next bytes of the stream); returns the events it completed."""
        events: list[MllpEvent] = []
        pos = 0
        size = len(data)
        while pos < size:
            state = self._state
            if state is _State.OUTSIDE:
                start = data.find(START, pos)
                if start < 0:
                    self._add_garbage(data, pos, size, events)
                    pos = size
                else:
                    self._add_garbage(data, pos, start, events)
                    self._end_garbage(events)
                    self._state = _State.INSIDE
                    pos = start + 1
            elif state is _State.INSIDE:
                special = _SPECIAL.search(data, pos)
                stop = size if special is None else special.start()
                if len(self._buffer) + stop - pos > self.max_message_bytes:
                    self._dropped = len(self._buffer) + stop - pos
                    events.append(Oversize(self._dropped, self.max_message_bytes))
                    self._buffer = bytearray()
                    self._state = _State.DISCARD
                    pos = stop  # the special byte, if any, is handled in DISCARD
                    continue
                self._buffer += data[pos:stop]
                pos = stop
                if special is not None:
                    pos += 1
                    if data[stop] == _FS:
                        events.append(Frame(bytes(self._buffer)))
                        self._state = _State.AFTER_END
                    else:
                        events.append(
                            Garbage(bytes(self._buffer[:REPORT_BYTES]), _ABANDONED_REASON, len(self._buffer))
                        )
                    self._buffer = bytearray()
            elif state is _State.AFTER_END:
                if data[pos] == _CR:
                    pos += 1
                self._state = _State.OUTSIDE
            else:  # DISCARD
                special = _SPECIAL.search(data, pos)
                stop = size if special is None else special.start()
                self._dropped += stop - pos
                pos = stop
                if special is not None:
                    pos += 1
                    self._state = _State.AFTER_END if data[stop] == _FS else _State.INSIDE
                    self._dropped = 0
        return events

    def eof(self) -> list[MllpEvent]:
        """The stream ended: report an unfinished frame or garbage run, and start afresh."""
        events: list[MllpEvent] = []
        if self._state is _State.INSIDE:
            events.append(Truncated(len(self._buffer), bytes(self._buffer[:REPORT_BYTES])))
        # DISCARD: the frame was reported as Oversize when it crossed the limit; nothing to add.
        self._end_garbage(events)
        self._state = _State.OUTSIDE
        self._buffer = bytearray()
        self._dropped = 0
        return events

    def _add_garbage(self, data: bytes, start: int, stop: int, events: list[MllpEvent]) -> None:
        if start == stop:
            return
        run = data[start:stop]
        if self._garbage_blank and run.strip(_NEWLINES):
            self._garbage_blank = False
        room = REPORT_BYTES - len(self._garbage_head)
        if room > 0:
            self._garbage_head += run[:room]
        self._garbage_size += stop - start
        if self._garbage_size >= self.max_message_bytes:
            self._end_garbage(events)  # a run that never ends is still reported, once per limit

    def _end_garbage(self, events: list[MllpEvent]) -> None:
        if self._garbage_size and not self._garbage_blank:
            events.append(Garbage(bytes(self._garbage_head), _OUTSIDE_REASON, self._garbage_size))
        self._garbage_head = bytearray()
        self._garbage_size = 0
        self._garbage_blank = True
