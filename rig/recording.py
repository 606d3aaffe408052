"""Record the bytes on a link, and replay a recording as a pump.

Format (JSON Lines, one object per line, UTF-8; documented in docs/rig.md):

* line 1, the header: ``{"format": "pumpgw-link-recording", "version": 1, "pump": ID,
  "protocol": "newera" | "alaris" | "modbus-rtu" | "modbus-tcp", "started": ISO-8601 UTC,
  "settings": {...}}``; ``settings`` holds what a driver needs to talk to the replay (address,
  baud rate, unit id).
* then one line per chunk: ``{"t": seconds since the start, "from": "host" | "pump", "hex": BYTES}``,
  and for TCP ``"conn": N`` (connections are numbered from 1 in the order they were accepted).

A chunk is what one read returned or one write sent, so a frame may span several chunks: readers
must not assume one frame per line. The recorder flushes every line, so a recording survives the
rig being killed.

Replay (:class:`Replayer`). A recording is cut into exchanges: the host's bytes up to the pump's
next bytes, then the pump's bytes up to the host's next. The replayer is a sans-I/O device: when
the host has sent exactly the next exchange's request it answers with that exchange's reply; when
what the host sends stops matching, it answers nothing from then on and records a
:class:`Divergence` naming the exchange, the bytes expected and the bytes received. A driver under
test therefore sees a pump that behaves exactly as the recorded one did, and any change in what the
driver sends is caught at the first differing byte. Replies are not re-timed: they leave as soon as
the request is complete (a link's ``baudrate`` paces them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final, Literal

from pumpgw.gateway.errors import ConfigError

FORMAT: Final = "pumpgw-link-recording"
VERSION: Final = 1
PROTOCOLS: Final = frozenset({"newera", "alaris", "modbus-rtu", "modbus-tcp"})

Direction = Literal["host", "pump"]


@dataclass(frozen=True, slots=True)
class Chunk:
    t: float
    source: Direction
    data: bytes
    conn: int | None = None


@dataclass(frozen=True, slots=True)
class Recording:
    pump: str
    protocol: str
    started: str
    settings: Mapping[str, Any]
    chunks: tuple[Chunk, ...]


class Recorder:
    """A :class:`~pumpgw.rig.faults.Tap` writing a recording to ``path`` (created or truncated).

    ``clock_start``: the wire clock's reading that is ``t = 0``. Close with :meth:`close`.
    """

    def __init__(
        self,
        path: Path,
        *,
        pump: str,
        protocol: str,
        started: datetime,
        clock_start: float,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}: one of {sorted(PROTOCOLS)}")
        self.path = path
        self._start = clock_start
        self._file: IO[str] | None = path.open("w", encoding="utf-8")
        header = {
            "format": FORMAT,
            "version": VERSION,
            "pump": pump,
            "protocol": protocol,
            "started": started.isoformat(),
            "settings": dict(settings or {}),
        }
        self._write(header)
        self.chunks = 0

    def host_sent(self, data: bytes, at: float, conn: int | None) -> None:
        self._chunk("host", data, at, conn)

    def device_sent(self, data: bytes, at: float, conn: int | None) -> None:
        self._chunk("pump", data, at, conn)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _chunk(self, source: Direction, data: bytes, at: float, conn: int | None) -> None:
        line: dict[str, Any] = {"t": round(max(0.0, at - self._start), 6), "from": source, "hex": data.hex()}
        if conn is not None:
            line["conn"] = conn
        self._write(line)
        self.chunks += 1

    def _write(self, obj: Mapping[str, Any]) -> None:
        if self._file is None:
            return  # closed: the recording has ended, later bytes are not part of it
        self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._file.flush()


def load_recording(path: Path) -> Recording:
    """Read and check a recording. Raises ConfigError naming the line and what was wrong."""
    source = str(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "file", str(path), f"a readable UTF-8 recording ({exc})") from exc
    if not lines:
        raise ConfigError(source, "line 1", "", f"a {FORMAT} header")
    header = _json(source, 1, lines[0])
    if header.get("format") != FORMAT:
        raise ConfigError(source, "line 1.format", header.get("format"), repr(FORMAT))
    if header.get("version") != VERSION:
        raise ConfigError(source, "line 1.version", header.get("version"), f"{VERSION}")
    if header.get("protocol") not in PROTOCOLS:
        raise ConfigError(source, "line 1.protocol", header.get("protocol"), f"one of {sorted(PROTOCOLS)}")
    settings = header.get("settings", {})
    if not isinstance(settings, dict):
        raise ConfigError(source, "line 1.settings", settings, "an object")
    chunks: list[Chunk] = []
    last_t = 0.0
    for number, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue
        obj = _json(source, number, text)
        t, who, hexed, conn = obj.get("t"), obj.get("from"), obj.get("hex"), obj.get("conn")
        if not isinstance(t, int | float) or isinstance(t, bool) or t < last_t:
            raise ConfigError(source, f"line {number}.t", t, f"seconds, not before {last_t}")
        if who not in ("host", "pump"):
            raise ConfigError(source, f"line {number}.from", who, '"host" or "pump"')
        try:
            data = bytes.fromhex(hexed) if isinstance(hexed, str) else None
        except ValueError:
            data = None
        if not data:
            raise ConfigError(source, f"line {number}.hex", hexed, "bytes as hexadecimal, at least one")
        if conn is not None and (not isinstance(conn, int) or isinstance(conn, bool) or conn < 1):
            raise ConfigError(source, f"line {number}.conn", conn, "a connection number from 1")
        last_t = float(t)
        chunks.append(Chunk(float(t), who, data, conn))
    return Recording(
        pump=str(header.get("pump", "")),
        protocol=str(header["protocol"]),
        started=str(header.get("started", "")),
        settings=settings,
        chunks=tuple(chunks),
    )


def _json(source: str, number: int, text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ConfigError(source, f"line {number}", text[:80], f"a JSON object ({exc})") from exc
    if not isinstance(obj, dict):
        raise ConfigError(source, f"line {number}", text[:80], "a JSON object")
    return obj


@dataclass(frozen=True, slots=True)
class Exchange:
    request: bytes
    reply: bytes


def exchanges(chunks: Iterable[Chunk]) -> tuple[Exchange, ...]:
    """Cut chunks into request/reply exchanges (see the module docstring). Pump bytes before the
    host's first bytes are a reply to nothing and are kept as an exchange with an empty request."""
    out: list[Exchange] = []
    request = bytearray()
    reply = bytearray()
    for chunk in chunks:
        if chunk.source == "host":
            if reply:
                out.append(Exchange(bytes(request), bytes(reply)))
                request.clear()
                reply.clear()
            request += chunk.data
        else:
            reply += chunk.data
    if request or reply:
        out.append(Exchange(bytes(request), bytes(reply)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Divergence:
    exchange: int  # 1-based
    expected: bytes
    received: bytes

    def __str__(self) -> str:
        return (
            f"exchange {self.exchange}: the host sent {self.received!r}, the recording has {self.expected!r}"
        )


class Replayer:
    """A sans-I/O device that plays a recording back (see the module docstring)."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.exchanges = exchanges(recording.chunks)
        self.position = 0  # exchanges answered so far
        self.divergence: Divergence | None = None
        self._buffer = bytearray()

    @property
    def finished(self) -> bool:
        return self.position >= len(self.exchanges)

    def receive(self, data: bytes, now: float) -> bytes:
        if self.divergence is not None:
            return b""
        self._buffer += data
        out = bytearray()
        while self.position < len(self.exchanges):
            expected = self.exchanges[self.position].request
            if len(self._buffer) < len(expected):
                if not expected.startswith(bytes(self._buffer)):
                    self._diverge(expected)
                break
            if not self._buffer.startswith(expected):
                self._diverge(expected)
                break
            del self._buffer[: len(expected)]
            out += self.exchanges[self.position].reply
            self.position += 1
            if not self._buffer:
                break
        else:
            if self._buffer:
                self._diverge(b"")
        return bytes(out)

    def _diverge(self, expected: bytes) -> None:
        self.divergence = Divergence(self.position + 1, expected, bytes(self._buffer))
