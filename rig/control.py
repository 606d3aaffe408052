"""The running rig's control socket: set faults, record links, list pumps, from another process.

``pumpgw rig up`` listens on a Unix socket (``control.sock`` in the rig's directory, mode 0600:
only its owner may break its pumps); ``pumpgw rig fault``, ``pumpgw rig record`` and
``pumpgw rig status`` connect, send one request and print the answer.

Wire format: one JSON object per line each way. Requests::

    {"op": "status"}
    {"op": "fault", "pump": ID, "kind": KIND, "count": N?, "seconds": S?, "delay": S?, "channel": N?}
    {"op": "clear", "pump": ID}
    {"op": "record", "pump": ID, "path": ABSOLUTE-PATH}
    {"op": "record-stop", "pump": ID}

Answers: ``{"ok": true, "detail": TEXT, "pumps": [...]?}`` or ``{"ok": false, "error": TEXT}``. A
request the rig cannot carry out is answered with the reason; it never stops the rig.

Other parts of the rig answer their own ops through ``delegate`` (the hospital: ``emar.*``, ``epr.*``,
:mod:`pumpgw.rig.hospital`): an async callable that returns the answer, or None for an op it does
not know, and never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from .bench_rig import BenchRig
from .faults import FaultError

_LOG = logging.getLogger(__name__)
_MAX_LINE: Final = 64 * 1024
SOCKET_NAME: Final = "control.sock"
#: Answers the ops of another part of the rig: the answer, or None when the op is not its own.
Delegate = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


class RigControlServer:
    """Serves ``rig`` on a Unix socket at ``path``. Use ``async with``."""

    def __init__(self, rig: BenchRig, path: Path, *, delegate: Delegate | None = None) -> None:
        self.rig = rig
        self.path = path
        self.delegate = delegate
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RigControlServer:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a socket left by a rig that was killed
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=_MAX_LINE)
        os.chmod(self.path, 0o600)
        return self

    async def __aexit__(self, *exc: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self.answer(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError) as exc:  # ValueError: a line over the limit
            _LOG.warning("rig control: connection dropped: %s", exc)
        finally:
            writer.close()  # not awaited: a rig stopping must not wait on a client

    async def answer(self, line: bytes) -> dict[str, Any]:
        """One request line → its answer, from ``delegate`` when it knows the op. Never raises."""
        if self.delegate is not None:
            try:
                request = json.loads(line)
            except ValueError:
                request = None  # handle_line says what is wrong with it
            if isinstance(request, dict) and (answer := await self.delegate(request)) is not None:
                return answer
        return self.handle_line(line)

    def handle_line(self, line: bytes) -> dict[str, Any]:
        """One request line → its answer. Never raises."""
        try:
            request = json.loads(line)
        except ValueError as exc:
            return {"ok": False, "error": f"not a JSON request: {exc}"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "a request is a JSON object with an 'op'"}
        try:
            return self._handle(request)
        except FaultError as exc:
            return {"ok": False, "error": str(exc)}

    def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        rig = self.rig
        if op not in ("status", "fault", "clear", "record", "record-stop"):
            raise FaultError(f"unknown op {op!r}: status, fault, clear, record or record-stop")
        if op == "status":
            return {"ok": True, "detail": f"{len(rig.pumps)} pump(s)", "pumps": rig.describe()}
        pump = _text(request, "pump")
        if op == "fault":
            kind = _text(request, "kind")
            if kind == "clear":
                return {"ok": True, "detail": rig.clear_faults(pump)}
            detail = rig.set_fault(
                pump,
                kind,
                count=_int(request, "count"),
                seconds=_float(request, "seconds"),
                delay_s=_float(request, "delay") or 0.0,
                channel=_int(request, "channel") or 1,
            )
            return {"ok": True, "detail": detail}
        if op == "clear":
            return {"ok": True, "detail": rig.clear_faults(pump)}
        if op == "record":
            path = Path(_text(request, "path"))
            if not path.is_absolute():
                raise FaultError(f"record: path {path} must be absolute (the rig runs elsewhere)")
            return {"ok": True, "detail": rig.start_recording(pump, path)}
        return {"ok": True, "detail": rig.stop_recording(pump)}


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise FaultError(f"request needs {key!r} as text, got {value!r}")
    return value


def _int(request: dict[str, Any], key: str) -> int | None:
    value = request.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise FaultError(f"{key} must be a whole number, got {value!r}")
    return value


def _float(request: dict[str, Any], key: str) -> float | None:
    value = request.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise FaultError(f"{key} must be a number, got {value!r}")
    return None if value is None else float(value)


async def ask(path: Path, request: dict[str, Any], *, timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one request to the rig at ``path`` and return its answer.
    Raises OSError when no rig listens there and TimeoutError when it does not answer."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=_MAX_LINE)
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    if not line:
        raise OSError(f"the rig at {path} closed the connection without answering")
    answer = json.loads(line)
    if not isinstance(answer, dict):
        raise OSError(f"the rig at {path} answered {line[:200]!r}")
    return answer
